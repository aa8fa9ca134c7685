from django.apps import AppConfig


class PatientsConfig(AppConfig):
    name = "backend.patients"
    label = "patients"
    verbose_name = "Patients"

    def ready(self) -> None:
        from backend.api.problems import register_problem
        from backend.patients.services import register_problem_codes

        for code, status, title in register_problem_codes:
            register_problem(code, status, title)
