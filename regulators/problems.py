"""The error codes of regulator reporting (registered with the problem catalogue)."""

from backend.api.problems import register_problem

for _code, _status, _title in (
    ("invalid_record", 500, "A regulator record did not match its schema"),
    ("not_a_regulator", 403, "Only officials of a provincial regulator may do this"),
    ("not_dead_lettered", 409, "Only a dead-lettered record can be replayed"),
):
    register_problem(_code, _status, _title)
