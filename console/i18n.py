"""The console pages' words, Chinese first (zh-hans) with English.

One catalogue, key → text per language, used by the templates (``{{ t.key }}``) and handed
to the pages' scripts as a JSON script element (``t("key")`` in ``i18n.js``). The
language is chosen by ``?lang=`` (remembered in a cookie), then that cookie, else
zh-hans: the console is Chinese first, whatever language the browser asks for.

Problem codes of the API have entries ``problem_<code>``; a code without one shows the
API's own ``detail``.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from console.words_oversight import WORDS as OVERSIGHT_WORDS
from console.words_prescribing import WORDS as PRESCRIBING_WORDS

LANGUAGES = ("zh-hans", "en")
DEFAULT_LANGUAGE = "zh-hans"
LANGUAGE_COOKIE = "console_lang"

MESSAGES: dict[str, dict[str, str]] = {
    # --- frame -----------------------------------------------------------------------------
    "app_name": {"zh-hans": "互联网医院 · 工作台", "en": "Internet hospital · Console"},
    "skip_to_main": {"zh-hans": "跳到主要内容", "en": "Skip to main content"},
    "nav_label": {"zh-hans": "主导航", "en": "Main navigation"},
    "nav_home": {"zh-hans": "首页", "en": "Home"},
    "language_label": {"zh-hans": "语言", "en": "Language"},
    "language_zh": {"zh-hans": "中文", "en": "中文"},
    "language_en": {"zh-hans": "English", "en": "English"},
    "sign_out": {"zh-hans": "退出登录", "en": "Sign out"},
    "loading": {"zh-hans": "加载中…", "en": "Loading…"},
    "network_error": {
        "zh-hans": "网络连接失败，请检查网络后重试。",
        "en": "The network request failed; check the connection and try again.",
    },
    "error_code": {"zh-hans": "错误代码：{code}", "en": "Error code: {code}"},
    # --- roles -----------------------------------------------------------------------------
    "role_doctor": {"zh-hans": "医生", "en": "Doctor"},
    "role_pharmacist": {"zh-hans": "药师", "en": "Pharmacist"},
    "role_pharmacy_staff": {"zh-hans": "药店人员", "en": "Pharmacy staff"},
    "role_regulator": {"zh-hans": "监管人员", "en": "Regulator"},
    "role_administrator": {"zh-hans": "医院管理员", "en": "Hospital administrator"},
    "placeholder_title": {"zh-hans": "{role}工作台", "en": "{role} console"},
    "placeholder_body": {
        "zh-hans": "此角色的页面即将上线。您可以继续通过 API 使用全部功能。",
        "en": "The pages for this role come later. Everything is available through the API.",
    },
    # --- sign-in ---------------------------------------------------------------------------
    "login_title": {"zh-hans": "登录工作台", "en": "Sign in to the console"},
    "login_username": {"zh-hans": "用户名", "en": "Username"},
    "login_password": {"zh-hans": "密码", "en": "Password"},
    "login_submit": {"zh-hans": "登录", "en": "Sign in"},
    "totp_title": {"zh-hans": "二次验证", "en": "Second factor"},
    "totp_hint": {
        "zh-hans": "请输入身份验证器应用中显示的 6 位动态码。",
        "en": "Enter the 6-digit code shown by your authenticator app.",
    },
    "totp_code": {"zh-hans": "动态验证码", "en": "Authenticator code"},
    "totp_submit": {"zh-hans": "验证并登录", "en": "Verify and sign in"},
    "totp_back": {"zh-hans": "返回重新输入密码", "en": "Back to the password"},
    "signed_out_idle": {
        "zh-hans": "您因长时间未操作已退出登录，请重新登录。",
        "en": "You were signed out after a period of inactivity; please sign in again.",
    },
    "session_warning_title": {"zh-hans": "即将自动退出", "en": "You will be signed out soon"},
    "session_warning_body": {
        "zh-hans": "由于长时间未操作，您将在 {seconds} 秒后自动退出登录。",
        "en": "Because of inactivity you will be signed out in {seconds} seconds.",
    },
    "session_stay": {"zh-hans": "保持登录", "en": "Stay signed in"},
    # --- doctor's home ---------------------------------------------------------------------
    "doctor_title": {"zh-hans": "医生工作台", "en": "Doctor's console"},
    "duty_heading": {"zh-hans": "接诊状态", "en": "Duty"},
    "duty_switch": {"zh-hans": "在线接诊", "en": "On duty"},
    "duty_on": {
        "zh-hans": "接诊中：新的问诊会进入您的队列",
        "en": "On duty: new consultations reach your queue",
    },
    "duty_off": {
        "zh-hans": "已停诊：您不会收到新的问诊",
        "en": "Off duty: no new consultations reach you",
    },
    "identity_check": {"zh-hans": "实名认证（人脸核验）", "en": "Identity check"},
    "identity_checked_at": {"zh-hans": "上次认证：{time}", "en": "Last check: {time}"},
    "identity_never": {"zh-hans": "今天尚未认证", "en": "Not checked yet"},
    "identity_passed": {"zh-hans": "认证通过", "en": "Check passed"},
    "identity_failed": {"zh-hans": "认证未通过", "en": "Check failed"},
    "queue_heading": {"zh-hans": "候诊队列", "en": "Waiting queue"},
    "queue_empty": {"zh-hans": "暂无候诊患者", "en": "Nobody is waiting"},
    "mine_heading": {"zh-hans": "我的问诊（进行中）", "en": "My consultations (in progress)"},
    "mine_empty": {"zh-hans": "没有进行中的问诊", "en": "No consultation in progress"},
    "queue_requested_at": {"zh-hans": "申请时间 {time}", "en": "Requested {time}"},
    "queue_expires_at": {
        "zh-hans": "{time} 前未接诊将过期",
        "en": "Expires {time} unless accepted",
    },
    "queue_open": {"zh-hans": "查看并接诊：{name}", "en": "Open and accept: {name}"},
    "mine_open": {"zh-hans": "进入诊室：{name}", "en": "Open the room: {name}"},
    "queue_arrived": {"zh-hans": "新的问诊：{name}", "en": "New consultation: {name}"},
    # --- connection ------------------------------------------------------------------------
    "conn_label": {"zh-hans": "连接状态", "en": "Connection"},
    "conn_connecting": {"zh-hans": "连接中…", "en": "Connecting…"},
    "conn_open": {"zh-hans": "已连接", "en": "Connected"},
    "conn_closed": {"zh-hans": "连接已断开，正在重连…", "en": "Disconnected, reconnecting…"},
    "conn_offline": {"zh-hans": "网络已断开", "en": "Offline"},
    "conn_failed": {"zh-hans": "无法连接", "en": "Cannot connect"},
    "conn_idle": {"zh-hans": "未连接", "en": "Not connected"},
    # --- consultation room -----------------------------------------------------------------
    "room_title": {"zh-hans": "诊室", "en": "Consultation room"},
    "back_to_queue": {"zh-hans": "返回工作台", "en": "Back to the console"},
    "summary_heading": {"zh-hans": "患者信息", "en": "Patient"},
    "summary_name": {"zh-hans": "姓名", "en": "Name"},
    "summary_sex": {"zh-hans": "性别", "en": "Sex"},
    "summary_age": {"zh-hans": "年龄", "en": "Age"},
    "summary_age_value": {"zh-hans": "{age} 岁", "en": "{age} years"},
    "summary_relation": {"zh-hans": "与账户关系", "en": "Relation to the account"},
    "summary_allergies": {"zh-hans": "过敏史", "en": "Allergies"},
    "summary_no_allergies": {"zh-hans": "无已知过敏", "en": "No known allergies"},
    "summary_prior": {"zh-hans": "线下既往诊断", "en": "Prior offline diagnosis"},
    "summary_complaint": {"zh-hans": "患者主诉", "en": "What the patient describes"},
    "summary_earlier": {"zh-hans": "既往问诊", "en": "Earlier consultations"},
    "summary_no_earlier": {"zh-hans": "无既往问诊", "en": "No earlier consultations"},
    "sex_male": {"zh-hans": "男", "en": "Male"},
    "sex_female": {"zh-hans": "女", "en": "Female"},
    "sex_unknown": {"zh-hans": "未知", "en": "Unknown"},
    "relation_self": {"zh-hans": "本人", "en": "Self"},
    "relation_child": {"zh-hans": "子女", "en": "Child"},
    "relation_parent": {"zh-hans": "父母", "en": "Parent"},
    "relation_spouse": {"zh-hans": "配偶", "en": "Spouse"},
    "relation_other": {"zh-hans": "其他（法定监护）", "en": "Other (legal guardianship)"},
    "status_requested": {"zh-hans": "待支付", "en": "Awaiting payment"},
    "status_waiting": {"zh-hans": "候诊中", "en": "Waiting"},
    "status_in_progress": {"zh-hans": "问诊中", "en": "In progress"},
    "status_ended": {"zh-hans": "已结束", "en": "Ended"},
    "status_referred_offline": {"zh-hans": "已转线下", "en": "Referred offline"},
    "status_first_visit_refused": {"zh-hans": "已拒诊（初诊）", "en": "Refused as a first visit"},
    "status_cancelled": {"zh-hans": "已取消", "en": "Cancelled"},
    "status_expired": {"zh-hans": "已过期", "en": "Expired"},
    "chat_heading": {"zh-hans": "问诊对话", "en": "Conversation"},
    "chat_log_label": {"zh-hans": "消息记录", "en": "Messages"},
    "chat_input": {"zh-hans": "输入消息", "en": "Message"},
    "chat_send": {"zh-hans": "发送", "en": "Send"},
    "chat_attach": {"zh-hans": "发送图片或文件", "en": "Send an image or file"},
    "chat_typing": {"zh-hans": "对方正在输入…", "en": "The patient is typing…"},
    "chat_pending": {"zh-hans": "等待发送", "en": "Waiting to send"},
    "chat_sent": {"zh-hans": "已送达", "en": "Delivered"},
    "chat_read": {"zh-hans": "已读", "en": "Read"},
    "chat_failed": {"zh-hans": "发送失败", "en": "Not sent"},
    "chat_me": {"zh-hans": "我", "en": "Me"},
    "chat_patient": {"zh-hans": "患者", "en": "Patient"},
    "chat_system": {"zh-hans": "系统", "en": "System"},
    "chat_closed": {
        "zh-hans": "问诊未进行中，无法发送消息。",
        "en": "The consultation is not open for messages.",
    },
    "chat_attachment": {"zh-hans": "附件：{name}", "en": "Attachment: {name}"},
    "actions_heading": {"zh-hans": "诊疗操作", "en": "Actions"},
    "accept_confirm": {
        "zh-hans": "我已核实：患者已在线下确诊，本次为复诊",
        "en": "I confirm the patient was diagnosed offline: this is a follow-up visit",
    },
    "accept_submit": {"zh-hans": "接诊", "en": "Accept"},
    "end_heading": {"zh-hans": "结束问诊", "en": "End the consultation"},
    "icd_search": {"zh-hans": "诊断（ICD-10 编码或名称）", "en": "Diagnosis (ICD-10 code or name)"},
    "icd_results": {"zh-hans": "诊断候选", "en": "Diagnosis suggestions"},
    "icd_none": {"zh-hans": "没有匹配的诊断", "en": "No matching diagnosis"},
    "icd_chosen": {"zh-hans": "已选诊断", "en": "Chosen diagnoses"},
    "icd_choose": {"zh-hans": "选择 {code} {name}", "en": "Choose {code} {name}"},
    "icd_remove": {"zh-hans": "移除 {code}", "en": "Remove {code}"},
    "icd_main": {"zh-hans": "主诊断", "en": "Main diagnosis"},
    "note_chief_complaint": {"zh-hans": "主诉", "en": "Chief complaint"},
    "note_history": {"zh-hans": "现病史", "en": "History"},
    "note_findings": {"zh-hans": "检查所见", "en": "Findings"},
    "note_advice": {"zh-hans": "医嘱", "en": "Advice"},
    "fee_yuan": {"zh-hans": "诊费（元）", "en": "Fee (yuan)"},
    "fee_invalid": {
        "zh-hans": "请输入金额，如 20 或 20.50",
        "en": "Enter an amount such as 20 or 20.50",
    },
    "end_submit": {"zh-hans": "结束问诊", "en": "End the consultation"},
    "refer_heading": {"zh-hans": "转线下就诊", "en": "Refer offline"},
    "refer_reason": {"zh-hans": "转诊原因", "en": "Reason for the referral"},
    "refer_submit": {"zh-hans": "转线下就诊", "en": "Refer offline"},
    "refuse_heading": {"zh-hans": "拒诊（非复诊）", "en": "Refuse as a first visit"},
    "refuse_reason": {"zh-hans": "拒诊原因", "en": "Reason for refusing"},
    "refuse_submit": {"zh-hans": "拒诊", "en": "Refuse"},
    "room_closed": {"zh-hans": "本次问诊{status}。", "en": "This consultation is {status}."},
    "room_reason": {"zh-hans": "原因：{reason}", "en": "Reason: {reason}"},
    "room_diagnoses": {"zh-hans": "诊断：{diagnoses}", "en": "Diagnoses: {diagnoses}"},
    # --- call ------------------------------------------------------------------------------
    "call_heading": {"zh-hans": "视频通话", "en": "Video call"},
    "call_start": {"zh-hans": "视频通话", "en": "Video call"},
    "call_answer": {"zh-hans": "接听视频通话", "en": "Answer the video call"},
    "call_hangup": {"zh-hans": "挂断", "en": "Hang up"},
    "call_local_video": {"zh-hans": "我的画面", "en": "My camera"},
    "call_remote_video": {"zh-hans": "患者画面", "en": "The patient's camera"},
    "call_state_idle": {"zh-hans": "未在通话", "en": "Not in a call"},
    "call_state_closed": {
        "zh-hans": "问诊进行中才能视频通话",
        "en": "Video calls are possible while the consultation is in progress",
    },
    "call_state_media": {
        "zh-hans": "正在打开摄像头和麦克风…",
        "en": "Opening the camera and microphone…",
    },
    "call_state_calling": {"zh-hans": "正在呼叫患者…", "en": "Calling the patient…"},
    "call_state_incoming": {
        "zh-hans": "患者发起了视频通话",
        "en": "The patient is calling you",
    },
    "call_state_connecting": {"zh-hans": "正在接通…", "en": "Connecting the call…"},
    "call_state_connected": {"zh-hans": "通话中", "en": "In the call"},
    "call_state_interrupted": {
        "zh-hans": "通话网络中断，正在恢复…",
        "en": "The call's connection is interrupted; recovering…",
    },
    "call_state_failed": {
        "zh-hans": "无法建立通话连接，请挂断后重试",
        "en": "The call could not connect; hang up and try again",
    },
    "call_state_ended": {"zh-hans": "通话已结束", "en": "The call has ended"},
    "call_state_ended_by_patient": {
        "zh-hans": "患者已挂断",
        "en": "The patient hung up",
    },
    "call_started": {"zh-hans": "视频通话开始", "en": "Video call started"},
    "call_ended": {"zh-hans": "视频通话结束", "en": "Video call ended"},
    "call_error_denied": {
        "zh-hans": "浏览器未获准使用摄像头或麦克风，请在地址栏的权限设置中允许后重试。",
        "en": "The browser may not use the camera or microphone; allow them in the "
        "site's permissions and try again.",
    },
    "call_error_no_device": {
        "zh-hans": "未找到摄像头或麦克风，请连接设备后重试。",
        "en": "No camera or microphone was found; connect one and try again.",
    },
    "call_error_busy": {
        "zh-hans": "摄像头或麦克风被其他程序占用，请关闭后重试。",
        "en": "The camera or microphone is in use by another program; close it and try again.",
    },
    "call_error_media": {
        "zh-hans": "无法打开摄像头或麦克风。",
        "en": "The camera or microphone could not be opened.",
    },
    "call_error_insecure": {
        "zh-hans": "此浏览器或非安全连接（非 HTTPS）不支持视频通话。",
        "en": "Video calls need a browser that supports them and a secure (HTTPS) page.",
    },
    "call_error_offline": {
        "zh-hans": "尚未连接到服务器，请待连接恢复后再发起通话。",
        "en": "Not connected to the server; call again once the connection is back.",
    },
    "call_error_failed": {
        "zh-hans": "视频通话建立失败，请重试。",
        "en": "The video call could not be set up; try again.",
    },
    # --- problems (the API's codes) --------------------------------------------------------
    "problem_authentication_failed": {
        "zh-hans": "用户名或密码错误。",
        "en": "Wrong username or password.",
    },
    "problem_account_locked": {
        "zh-hans": "登录失败次数过多，账户已暂时锁定，请稍后再试。",
        "en": "Too many failed sign-ins; try again later.",
    },
    "problem_totp_invalid": {
        "zh-hans": "动态验证码错误或已使用，请输入新的验证码。",
        "en": "The authenticator code is wrong or was already used.",
    },
    "problem_totp_not_enrolled": {
        "zh-hans": "您的账户尚未绑定身份验证器，请联系管理员。",
        "en": "No authenticator is enrolled for your account; ask an administrator.",
    },
    "problem_not_authenticated": {"zh-hans": "请先登录。", "en": "Please sign in."},
    "problem_throttled": {
        "zh-hans": "操作过于频繁，请稍后再试。",
        "en": "Too many requests; wait a moment.",
    },
    "problem_permission_denied": {"zh-hans": "您无权执行此操作。", "en": "You may not do this."},
    "problem_not_found": {"zh-hans": "未找到该记录。", "en": "Not found."},
    "problem_validation_error": {
        "zh-hans": "填写的内容有误，请检查。",
        "en": "Some fields are invalid; please check them.",
    },
    "problem_identity_check_required": {
        "zh-hans": "请先完成今天的实名认证。",
        "en": "Complete today's identity check first.",
    },
    "problem_doctor_not_qualified": {
        "zh-hans": "您的执业资质（备案、执业证书或医院执业许可）不满足要求。",
        "en": "Your qualification (filing, practice licence or the hospital's licence) does "
        "not allow this.",
    },
    "problem_follow_up_not_confirmed": {
        "zh-hans": "请确认本次为复诊，或以初诊为由拒诊。",
        "en": "Confirm it is a follow-up, or refuse it as a first visit.",
    },
    "problem_already_accepted": {
        "zh-hans": "该问诊已被其他医生接诊。",
        "en": "Another doctor has already accepted this consultation.",
    },
    "problem_not_your_queue": {
        "zh-hans": "该问诊不在您的队列中。",
        "en": "This consultation is queued for another doctor or department.",
    },
    "problem_consultation_state_conflict": {
        "zh-hans": "问诊当前状态不允许此操作。",
        "en": "The consultation is not in a state that allows this.",
    },
    "problem_consultation_not_open": {
        "zh-hans": "问诊未进行中，无法发送消息。",
        "en": "The consultation is not open for messages.",
    },
    "problem_invalid_icd10": {
        "zh-hans": "诊断编码无效。",
        "en": "Unknown or malformed ICD-10 code.",
    },
}


# Each group of pages keeps its own words beside its views; one catalogue serves them all.
for _words in (PRESCRIBING_WORDS, OVERSIGHT_WORDS):
    _clash = sorted(set(_words) & set(MESSAGES))
    if _clash:
        raise ImportError(f"console words defined twice: {', '.join(_clash)}")
    MESSAGES.update(_words)


def console_language(request: HttpRequest) -> str:
    """``?lang=`` first, then the remembered choice, else Chinese."""
    for candidate in (request.GET.get("lang"), request.COOKIES.get(LANGUAGE_COOKIE)):
        if candidate in LANGUAGES:
            return str(candidate)
    return DEFAULT_LANGUAGE


def remember_language(request: HttpRequest, response: HttpResponse, language: str) -> None:
    """Keep an explicit ``?lang=`` choice for the next pages (a year, this site only)."""
    if request.GET.get("lang") == language:
        response.set_cookie(
            LANGUAGE_COOKIE, language, max_age=365 * 24 * 3600, samesite="Lax", httponly=True
        )


def messages_for(language: str) -> dict[str, str]:
    return {key: texts[language] for key, texts in MESSAGES.items()}
