"""The console's words for the prescription editor (doctor) and the pharmacist's and
pharmacy's pages: key → {"zh-hans", "en"}, merged into ``console.i18n.MESSAGES`` (a key
defined twice refuses to load). Every key here starts with ``rx_`` except the
``problem_<code>`` entries of the prescription API's codes."""

WORDS: dict[str, dict[str, str]] = {
    # --- the room's way in -----------------------------------------------------------------
    "rx_open_editor": {"zh-hans": "开处方", "en": "Write a prescription"},
    # --- the editor ------------------------------------------------------------------------
    "rx_editor_title": {"zh-hans": "开处方", "en": "Write a prescription"},
    "rx_back_to_room": {"zh-hans": "返回诊室", "en": "Back to the consultation"},
    "rx_patient": {"zh-hans": "患者：{name}", "en": "Patient: {name}"},
    "rx_status_label": {"zh-hans": "处方状态", "en": "Prescription status"},
    "rx_status_new": {"zh-hans": "未保存", "en": "Not saved"},
    "rx_status_draft": {"zh-hans": "草稿", "en": "Draft"},
    "rx_status_signed": {"zh-hans": "已签名", "en": "Signed"},
    "rx_status_under_review": {"zh-hans": "待药师审核", "en": "Under pharmacist review"},
    "rx_status_review_rejected": {"zh-hans": "审核未通过", "en": "Rejected by review"},
    "rx_status_active": {"zh-hans": "已生效", "en": "Active"},
    "rx_status_claimed": {"zh-hans": "药店已认领", "en": "Claimed by a pharmacy"},
    "rx_status_dispensed": {"zh-hans": "已调配", "en": "Dispensed"},
    "rx_status_shipped": {"zh-hans": "已发货", "en": "Shipped"},
    "rx_status_delivered": {"zh-hans": "已送达", "en": "Delivered"},
    "rx_status_cancelled": {"zh-hans": "已作废", "en": "Cancelled"},
    "rx_status_expired": {"zh-hans": "已过期", "en": "Expired"},
    "rx_search_heading": {"zh-hans": "药品检索", "en": "Find a drug"},
    "rx_search": {
        "zh-hans": "药品编码或名称",
        "en": "Drug code or name",
    },
    "rx_search_results": {"zh-hans": "检索结果", "en": "Search results"},
    "rx_search_none": {"zh-hans": "未找到药品。", "en": "No drug found."},
    "rx_search_count": {"zh-hans": "找到 {count} 种药品。", "en": "{count} drug(s) found."},
    "rx_add_drug": {"zh-hans": "添加 {name}", "en": "Add {name}"},
    "rx_controlled_mark": {"zh-hans": "特殊管理药品", "en": "Specially controlled"},
    "rx_lines_heading": {"zh-hans": "处方明细", "en": "Lines"},
    "rx_lines_empty": {
        "zh-hans": "尚未添加药品：请先检索并添加。",
        "en": "No drug yet: find one and add it.",
    },
    "rx_line_legend": {"zh-hans": "第 {n} 行：{name}", "en": "Line {n}: {name}"},
    "rx_dose": {"zh-hans": "单次剂量", "en": "Dose"},
    "rx_dose_unit": {"zh-hans": "剂量单位", "en": "Dose unit"},
    "rx_frequency": {"zh-hans": "用药频次", "en": "Frequency"},
    "rx_route": {"zh-hans": "给药途径", "en": "Route"},
    "rx_days": {"zh-hans": "用药天数", "en": "Days"},
    "rx_quantity": {"zh-hans": "数量（{unit}）", "en": "Quantity ({unit})"},
    "rx_remove_line": {"zh-hans": "删除第 {n} 行", "en": "Remove line {n}"},
    "rx_details_heading": {"zh-hans": "处方信息", "en": "Prescription details"},
    "rx_validity_days": {"zh-hans": "有效期（天）", "en": "Validity (days)"},
    "rx_chronic_reason": {
        "zh-hans": "慢性病延长用量理由（超过7日时填写）",
        "en": "Chronic-disease reason (for more than 7 days)",
    },
    "rx_child_legend": {
        "zh-hans": "6岁以下儿童：监护人和相关专业医师",
        "en": "Child under 6: guardian and specialist present",
    },
    "rx_guardian_name": {"zh-hans": "监护人姓名", "en": "Guardian's name"},
    "rx_guardian_relation": {"zh-hans": "与患儿关系", "en": "Relation to the child"},
    "rx_specialist_name": {"zh-hans": "相关专业医师姓名", "en": "Specialist's name"},
    "rx_checks_heading": {"zh-hans": "规则检查", "en": "Rule checks"},
    "rx_checks_none": {
        "zh-hans": "添加药品后将实时显示规则检查结果。",
        "en": "The rule checks appear as soon as a drug is added.",
    },
    "rx_checks_running": {"zh-hans": "正在检查…", "en": "Checking…"},
    "rx_checks_stale": {
        "zh-hans": "含特殊管理药品：请删除该行后再检查。",
        "en": "A specially controlled drug is listed: remove its line to check again.",
    },
    "rx_outcome_pass": {"zh-hans": "通过", "en": "Pass"},
    "rx_outcome_warning": {"zh-hans": "警告", "en": "Warning"},
    "rx_outcome_error": {"zh-hans": "不通过", "en": "Blocked"},
    "rx_check_line": {"zh-hans": "第 {n} 行", "en": "line {n}"},
    "rx_save": {"zh-hans": "保存草稿", "en": "Save draft"},
    "rx_saved_at": {"zh-hans": "草稿已保存（{time}）", "en": "Draft saved ({time})"},
    "rx_not_saved": {
        "zh-hans": "尚未保存：内容保留在本页中。",
        "en": "Not saved yet: what you typed is kept on this page.",
    },
    "rx_sign_heading": {"zh-hans": "签名", "en": "Sign"},
    "rx_otp": {"zh-hans": "动态验证码（身份验证器）", "en": "Authenticator code"},
    "rx_sign": {"zh-hans": "签名并提交审核", "en": "Sign and send for review"},
    "rx_signed_notice": {
        "zh-hans": "处方已提交，当前状态：{status}。",
        "en": "Prescription sent; its status now: {status}.",
    },
    "rx_rejected_reason": {"zh-hans": "审核意见：{reason}", "en": "Reviewer's reason: {reason}"},
    "rx_revise": {"zh-hans": "修改后重新签名", "en": "Revise and sign again"},
    "rx_new": {"zh-hans": "为本次问诊再开一张处方", "en": "Write another prescription"},
    "rx_refused_rule": {"zh-hans": "被拒绝的规则：{name}", "en": "Refused by the rule: {name}"},
    # --- the pharmacist's queue -------------------------------------------------------------
    "rx_pharmacist_title": {"zh-hans": "处方审核", "en": "Prescription review"},
    "rx_duty_heading": {"zh-hans": "值班状态", "en": "Duty"},
    "rx_duty_switch": {"zh-hans": "值班（接收审核推送）", "en": "On duty (live review queue)"},
    "rx_duty_on": {"zh-hans": "值班中", "en": "On duty"},
    "rx_duty_off": {"zh-hans": "未值班", "en": "Off duty"},
    "rx_queue_heading": {"zh-hans": "待审核处方", "en": "Waiting for review"},
    "rx_queue_empty": {"zh-hans": "暂无待审核处方。", "en": "Nothing to review."},
    "rx_queue_open": {
        "zh-hans": "审核 {name} 的处方",
        "en": "Review the prescription of {name}",
    },
    "rx_queue_meta": {
        "zh-hans": "{doctor} · {lines} 种药品 · 签名于 {time}",
        "en": "{doctor} · {lines} drug(s) · signed {time}",
    },
    "rx_queue_arrived": {
        "zh-hans": "新的待审核处方：{name}",
        "en": "A new prescription to review: {name}",
    },
    # --- the review page --------------------------------------------------------------------
    "rx_review_title": {"zh-hans": "审核处方", "en": "Review a prescription"},
    "rx_back_to_queue": {"zh-hans": "返回审核队列", "en": "Back to the review queue"},
    "rx_summary_heading": {"zh-hans": "处方", "en": "Prescription"},
    "rx_patient_label": {"zh-hans": "患者", "en": "Patient"},
    "rx_doctor_label": {"zh-hans": "开方医生", "en": "Prescribing doctor"},
    "rx_diagnoses_label": {"zh-hans": "诊断", "en": "Diagnoses"},
    "rx_validity_label": {"zh-hans": "有效期", "en": "Validity"},
    "rx_validity_value": {"zh-hans": "{days} 天", "en": "{days} day(s)"},
    "rx_issued_label": {"zh-hans": "开具时间", "en": "Issued"},
    "rx_chronic_label": {"zh-hans": "慢性病理由", "en": "Chronic-disease reason"},
    "rx_total_label": {"zh-hans": "金额", "en": "Total"},
    "rx_total_value": {"zh-hans": "¥{yuan}", "en": "¥{yuan}"},
    "rx_col_drug": {"zh-hans": "药品", "en": "Drug"},
    "rx_col_usage": {"zh-hans": "用法用量", "en": "Usage"},
    "rx_col_days": {"zh-hans": "天数", "en": "Days"},
    "rx_col_quantity": {"zh-hans": "数量", "en": "Quantity"},
    "rx_verification_heading": {"zh-hans": "电子签名验证", "en": "Signature verification"},
    "rx_verification_valid": {
        "zh-hans": "签名验证通过",
        "en": "Signature verified",
    },
    "rx_verification_invalid": {
        "zh-hans": "签名验证失败：{reason}（{code}）",
        "en": "Signature verification failed: {reason} ({code})",
    },
    "rx_verification_none": {"zh-hans": "尚未签名。", "en": "Not signed yet."},
    "rx_signer": {
        "zh-hans": "{role}：{name}，执业证书 {licence}，证书序列号 {serial}，签名于 {time}",
        "en": "{role}: {name}, practice certificate {licence}, certificate {serial}, signed {time}",
    },
    "rx_signer_doctor": {"zh-hans": "医生", "en": "Doctor"},
    "rx_signer_pharmacist": {"zh-hans": "药师", "en": "Pharmacist"},
    "rx_approve_heading": {"zh-hans": "审核通过（药师签名）", "en": "Approve (countersign)"},
    "rx_approve": {"zh-hans": "审核通过并签名", "en": "Approve and countersign"},
    "rx_reject_heading": {"zh-hans": "审核不通过", "en": "Reject"},
    "rx_reject_reason": {"zh-hans": "不通过理由", "en": "Reason"},
    "rx_reject": {"zh-hans": "退回医生", "en": "Reject"},
    "rx_done": {
        "zh-hans": "审核完成，处方状态：{status}。",
        "en": "Review done; prescription status: {status}.",
    },
    # --- the prescription API's problems ------------------------------------------------------
    "problem_controlled_drug_forbidden": {
        "zh-hans": "特殊管理药品不得在线开具。",
        "en": "Specially controlled drugs cannot be prescribed online.",
    },
    "problem_validity_too_long": {
        "zh-hans": "处方有效期不得超过3天。",
        "en": "The validity is at most 3 days.",
    },
    "problem_supply_too_long": {
        "zh-hans": "用量超过限制：超过7日须注明慢性病理由，且开具数量不得超过所写天数的用量。",
        "en": "The supply is over the limit: more than 7 days needs a chronic-disease reason, "
        "and the quantity may not last longer than the days of its line.",
    },
    "problem_guardian_required": {
        "zh-hans": "6岁以下儿童须登记监护人和相关专业医师。",
        "en": "A child under 6: record the guardian and the specialist present.",
    },
    "problem_unknown_drug": {
        "zh-hans": "药品不在目录中或已停用。",
        "en": "The drug is not in the catalogue or no longer available.",
    },
    "problem_prescribing_closed": {
        "zh-hans": "该问诊当前不能开处方。",
        "en": "This consultation cannot be prescribed for now.",
    },
    "problem_signature_required": {
        "zh-hans": "请输入身份验证器中的动态验证码以签名。",
        "en": "Enter the code from your authenticator to sign.",
    },
    "problem_not_your_review": {
        "zh-hans": "该处方不属于您所在医院的审核范围。",
        "en": "This prescription is not for your hospital's review.",
    },
    "problem_prescription_state_conflict": {
        "zh-hans": "处方当前状态不允许该操作。",
        "en": "The prescription's status does not allow this.",
    },
    "problem_prescription_cancelled": {
        "zh-hans": "处方已作废。",
        "en": "The prescription is cancelled.",
    },
    "problem_prescription_expired": {
        "zh-hans": "处方已过期。",
        "en": "The prescription has expired.",
    },
    "problem_pharmacist_not_qualified": {
        "zh-hans": "您的药师备案或执业证书无效（或医院执业许可已过期），不能审核处方。",
        "en": "Your filing or practice licence (or the hospital's licence) is not valid: "
        "you cannot review prescriptions.",
    },
    "problem_no_signing_certificate": {
        "zh-hans": "您没有有效的签名证书，请联系医院管理员。",
        "en": "You have no valid signing certificate; ask the hospital administrator.",
    },
    "problem_certificate_revoked": {
        "zh-hans": "您的签名证书已被吊销，请联系医院管理员。",
        "en": "Your signing certificate has been revoked; ask the hospital administrator.",
    },
    "problem_bundle_invalid": {
        "zh-hans": "处方签名验证未通过，不能继续。",
        "en": "The prescription's signatures do not verify; it cannot go on.",
    },
}
