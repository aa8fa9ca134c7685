#!/usr/bin/env python3
"""Build consultations/data/icd10.csv from the CDC ICD-10-CM tabular list.

Usage:
    python build_icd10.py SOURCE [-o OUTPUT] [--cm-only]

SOURCE is one of:
  * the CDC/NCHS ICD-10-CM tabular XML (``icd10cm-tabular-<release>.xml``,
    root element ``<ICD10CM.tabular>``);
  * a ``.zip`` or ``.whl`` that contains exactly one ``*tabular*.xml`` member,
    for example the CDC's annual code-table zip, or the ``simple-icd-10-cm``
    wheel from PyPI (``pip download --no-deps simple-icd-10-cm``), which ships
    the CDC file unmodified.

OUTPUT defaults to ``icd10.csv`` next to this script.

The output has the header ``code,name_zh,name_en,kind`` and is sorted by code.
Rows come from three places, all described in README.md next to this script:

  1. ICD-10-CM three-character categories (``kind=category``) and
     subcategories with one character after the dot (``kind=subcategory``),
     with their English titles from the CDC file.
  2. ``WHO_SUPPLEMENT`` below: a short, hand-written list of WHO ICD-10 codes
     that Chinese records use but ICD-10-CM does not have (E14, I64, I50.0 ...).
     Their English names are our own plain wording, not WHO's text.
     ``--cm-only`` leaves them out.
  3. ``CN_EXTENSIONS`` below: a small sample of Chinese national clinical
     edition (国家临床版 2.0) six-character codes (``kind=cn_extension``).

Chinese names come from ``ZH_NAMES`` below, and from the two lists above.

Standard library only. The script refuses to write the file if any check
fails (code pattern, duplicates, missing parent category, empty English name,
a Chinese name given for a code that is not in the output).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import re
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

CODE_RE = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Zx]{1,4})?$")
CATEGORY_RE = re.compile(r"^[A-Z][0-9]{2}$")
SUBCATEGORY_RE = re.compile(r"^[A-Z][0-9]{2}\.[0-9A-Z]$")
HEADER = ["code", "name_zh", "name_en", "kind"]

# ---------------------------------------------------------------------------
# Chinese names for ICD-10-CM rows.
#
# Rule: a Chinese name is given only where the ICD-10-CM title and the WHO
# ICD-10 title (which the Chinese national editions follow) mean the same
# thing, so the name is right whichever of the two a record was coded in.
# Where the two differ in meaning (for example E11.0: CM "with hyperosmolarity",
# WHO "with coma"; M81.0: CM "age-related", WHO "postmenopausal"; I12.x, I13.x,
# I21.0-I21.4, K29.0, J45.9, H40.1) the Chinese name is left empty on purpose.
# A few ICD-10-CM-only codes (I50.2-I50.4, N40.0-N40.1, J45.2-J45.5, G20.A-C
# ...) carry a translation of the CM title.
# ---------------------------------------------------------------------------
ZH_NAMES: dict[str, str] = {
    # Infectious: chronic viral hepatitis
    "B18": "慢性病毒性肝炎",
    "B18.0": "慢性乙型病毒性肝炎，伴有δ因子",
    "B18.1": "慢性乙型病毒性肝炎，不伴有δ因子",
    "B18.2": "慢性丙型病毒性肝炎",
    "B18.8": "其他的慢性病毒性肝炎",
    "B18.9": "慢性病毒性肝炎，未特指",
    # Blood
    "D50": "缺铁性贫血",
    "D50.0": "继发于失血（慢性）的缺铁性贫血",
    "D50.9": "缺铁性贫血，未特指",
    # Thyroid
    "E03": "其他的甲状腺功能减退症",
    "E03.9": "甲状腺功能减退症，未特指",
    "E04": "其他的非毒性甲状腺肿",
    "E04.1": "非毒性单个甲状腺结节",
    "E04.2": "非毒性多结节性甲状腺肿",
    "E04.9": "非毒性甲状腺肿，未特指",
    "E05": "甲状腺毒症［甲状腺功能亢进症］",
    "E05.0": "甲状腺毒症伴有弥漫性甲状腺肿",
    "E05.9": "甲状腺毒症，未特指",
    "E06": "甲状腺炎",
    "E06.1": "亚急性甲状腺炎",
    "E06.3": "自身免疫性甲状腺炎",
    # Diabetes (E10.0/E11.0/E13.0 and .5 differ between CM and WHO: left empty)
    "E10": "1型糖尿病",
    "E10.1": "1型糖尿病伴有酮症酸中毒",
    "E10.2": "1型糖尿病伴有肾并发症",
    "E10.3": "1型糖尿病伴有眼并发症",
    "E10.4": "1型糖尿病伴有神经并发症",
    "E10.6": "1型糖尿病伴有其他特指的并发症",
    "E10.8": "1型糖尿病伴有未特指的并发症",
    "E10.9": "1型糖尿病不伴有并发症",
    "E11": "2型糖尿病",
    "E11.1": "2型糖尿病伴有酮症酸中毒",
    "E11.2": "2型糖尿病伴有肾并发症",
    "E11.3": "2型糖尿病伴有眼并发症",
    "E11.4": "2型糖尿病伴有神经并发症",
    "E11.6": "2型糖尿病伴有其他特指的并发症",
    "E11.8": "2型糖尿病伴有未特指的并发症",
    "E11.9": "2型糖尿病不伴有并发症",
    "E13": "其他特指的糖尿病",
    "E13.1": "其他特指的糖尿病伴有酮症酸中毒",
    "E13.2": "其他特指的糖尿病伴有肾并发症",
    "E13.3": "其他特指的糖尿病伴有眼并发症",
    "E13.4": "其他特指的糖尿病伴有神经并发症",
    "E13.6": "其他特指的糖尿病伴有其他特指的并发症",
    "E13.8": "其他特指的糖尿病伴有未特指的并发症",
    "E13.9": "其他特指的糖尿病不伴有并发症",
    # Nutrition and metabolism
    "E55": "维生素D缺乏",
    "E55.9": "维生素D缺乏，未特指",
    "E66": "超重和肥胖",
    "E66.0": "热量过度引起的肥胖",
    "E66.3": "超重",
    "E66.9": "肥胖症，未特指",
    "E78": "脂蛋白代谢紊乱和其他脂血症",
    "E78.0": "单纯高胆固醇血症",
    "E78.1": "单纯高甘油三酯血症",
    "E78.2": "混合性高脂血症",
    "E78.4": "其他的高脂血症",
    "E78.5": "高脂血症，未特指",
    "E78.9": "脂蛋白代谢紊乱，未特指",
    "E79": "嘌呤和嘧啶代谢紊乱",
    "E79.0": "高尿酸血症，不伴有炎性关节炎和痛风石病体征",
    # Mental and behavioural
    "F01": "血管性痴呆",
    "F03": "未特指的痴呆",
    "F20": "精神分裂症",
    "F31": "双相情感障碍",
    "F32": "抑郁发作",
    "F32.0": "轻度抑郁发作",
    "F32.1": "中度抑郁发作",
    "F32.2": "重度抑郁发作，不伴有精神病性症状",
    "F32.3": "重度抑郁发作，伴有精神病性症状",
    "F32.8": "其他的抑郁发作",
    "F32.9": "抑郁发作，未特指",
    "F33": "复发性抑郁障碍",
    "F33.0": "复发性抑郁障碍，目前为轻度发作",
    "F33.1": "复发性抑郁障碍，目前为中度发作",
    "F33.2": "复发性抑郁障碍，目前为不伴有精神病性症状的重度发作",
    "F33.3": "复发性抑郁障碍，目前为伴有精神病性症状的重度发作",
    "F33.4": "复发性抑郁障碍，目前为缓解状态",
    "F33.8": "其他的复发性抑郁障碍",
    "F33.9": "复发性抑郁障碍，未特指",
    "F41": "其他焦虑障碍",
    "F41.0": "惊恐障碍［间歇发作性焦虑］",
    "F41.1": "广泛性焦虑障碍",
    "F41.3": "其他混合性焦虑障碍",
    "F41.8": "其他特指的焦虑障碍",
    "F41.9": "焦虑障碍，未特指",
    "F51": "非器质性睡眠障碍",
    "F51.0": "非器质性失眠症",
    # Nervous system
    "G20": "帕金森病",
    "G20.A": "帕金森病，不伴有异动症",
    "G20.B": "帕金森病，伴有异动症",
    "G20.C": "帕金森综合征，未特指",
    "G30": "阿尔茨海默病",
    "G40": "癫痫",
    "G40.3": "全身性特发性癫痫和癫痫综合征",
    "G40.9": "癫痫，未特指",
    "G43": "偏头痛",
    "G45": "短暂性大脑缺血性发作和相关的综合征",
    "G45.9": "短暂性脑缺血发作，未特指",
    "G47": "睡眠障碍",
    "G47.0": "失眠",
    "G47.3": "睡眠呼吸暂停",
    "G47.4": "发作性睡病和猝倒",
    "G47.9": "睡眠障碍，未特指",
    # Eye
    "H25": "老年性白内障",
    "H40": "青光眼",
    "H40.2": "原发性闭角型青光眼",
    "H40.9": "青光眼，未特指",
    # Circulatory: hypertension
    "I10": "原发性高血压",
    "I11": "高血压性心脏病",
    "I11.0": "高血压性心脏病伴有心力衰竭",
    "I11.9": "高血压性心脏病不伴有心力衰竭",
    "I12": "高血压性肾脏病",
    "I13": "高血压性心脏和肾脏病",
    "I15": "继发性高血压",
    "I15.0": "肾血管性高血压",
    "I15.1": "继发于其他肾疾患的高血压",
    "I15.2": "继发于内分泌疾患的高血压",
    "I15.8": "其他的继发性高血压",
    "I15.9": "继发性高血压，未特指",
    # Circulatory: ischaemic heart disease (冠心病)
    "I20": "心绞痛",
    "I20.0": "不稳定型心绞痛",
    "I20.1": "有痉挛记录的心绞痛",
    "I20.2": "难治性心绞痛",
    "I20.8": "其他类型的心绞痛",
    "I20.9": "心绞痛，未特指",
    "I21": "急性心肌梗死",
    "I21.9": "急性心肌梗死，未特指",
    "I22": "随后性心肌梗死",
    "I24": "其他急性缺血性心脏病",
    "I25": "慢性缺血性心脏病",
    "I25.1": "冠状动脉粥样硬化性心脏病",
    "I25.2": "陈旧性心肌梗死",
    "I25.3": "心脏动脉瘤",
    "I25.4": "冠状动脉瘤和夹层",
    "I25.5": "缺血性心肌病",
    "I25.6": "无症状性心肌缺血",
    "I25.8": "其他类型的慢性缺血性心脏病",
    "I25.9": "慢性缺血性心脏病，未特指",
    # Circulatory: other heart disease
    "I26": "肺栓塞",
    "I27": "其他的肺源性心脏病",
    "I42": "心肌病",
    "I47": "阵发性心动过速",
    "I47.1": "室上性心动过速",
    "I48": "心房颤动和心房扑动",
    "I48.0": "阵发性心房颤动",
    "I48.1": "持续性心房颤动",
    "I48.2": "慢性心房颤动",
    "I48.3": "典型心房扑动",
    "I48.4": "非典型心房扑动",
    "I48.9": "心房颤动和心房扑动，未特指",
    "I49": "其他心律失常",
    "I49.1": "房性期前收缩",
    "I49.3": "室性期前收缩",
    "I49.5": "病态窦房结综合征",
    "I49.9": "心律失常，未特指",
    "I50": "心力衰竭",
    "I50.1": "左心室衰竭",
    "I50.2": "收缩性（充血性）心力衰竭",
    "I50.3": "舒张性（充血性）心力衰竭",
    "I50.4": "收缩性和舒张性混合性（充血性）心力衰竭",
    "I50.9": "心力衰竭，未特指",
    # Circulatory: cerebrovascular
    "I60": "蛛网膜下腔出血",
    "I61": "脑内出血",
    "I63": "脑梗死",
    "I63.0": "入脑前动脉血栓形成引起的脑梗死",
    "I63.1": "入脑前动脉栓塞引起的脑梗死",
    "I63.2": "入脑前动脉未特指的闭塞或狭窄引起的脑梗死",
    "I63.3": "大脑动脉血栓形成引起的脑梗死",
    "I63.4": "大脑动脉栓塞引起的脑梗死",
    "I63.5": "大脑动脉未特指的闭塞或狭窄引起的脑梗死",
    "I63.6": "大脑静脉血栓形成引起的脑梗死，非生脓性",
    "I63.8": "其他的脑梗死",
    "I63.9": "脑梗死，未特指",
    "I65": "入脑前动脉的闭塞和狭窄，未造成脑梗死",
    "I66": "大脑动脉的闭塞和狭窄，未造成脑梗死",
    "I67": "其他脑血管病",
    "I67.2": "大脑动脉粥样硬化",
    "I67.4": "高血压脑病",
    "I67.9": "脑血管病，未特指",
    "I69": "脑血管病后遗症",
    "I69.0": "蛛网膜下腔出血后遗症",
    "I69.1": "脑内出血后遗症",
    "I69.3": "脑梗死后遗症",
    # Circulatory: arteries and veins
    "I70": "动脉粥样硬化",
    "I70.0": "主动脉粥样硬化",
    "I70.1": "肾动脉粥样硬化",
    "I70.2": "四肢动脉粥样硬化",
    "I73.9": "周围血管病，未特指",
    "I83": "下肢静脉曲张",
    # Respiratory
    "J30": "血管舒缩性和变应性鼻炎",
    "J30.0": "血管舒缩性鼻炎",
    "J30.1": "花粉引起的变应性鼻炎",
    "J30.2": "其他季节性变应性鼻炎",
    "J30.5": "食物引起的变应性鼻炎",
    "J30.8": "其他的变应性鼻炎",
    "J30.9": "变应性鼻炎，未特指",
    "J31": "慢性鼻炎、鼻咽炎和咽炎",
    "J32": "慢性鼻窦炎",
    "J41": "单纯性和黏液脓性慢性支气管炎",
    "J42": "未特指的慢性支气管炎",
    "J43": "肺气肿",
    "J43.9": "肺气肿，未特指",
    "J44": "其他的慢性阻塞性肺疾病",
    "J44.0": "慢性阻塞性肺疾病伴有急性下呼吸道感染",
    "J44.1": "慢性阻塞性肺疾病伴有急性加重",
    "J44.8": "其他特指的慢性阻塞性肺疾病",
    "J44.9": "慢性阻塞性肺疾病，未特指",
    "J45": "哮喘",
    "J45.2": "轻度间歇性哮喘",
    "J45.3": "轻度持续性哮喘",
    "J45.4": "中度持续性哮喘",
    "J45.5": "重度持续性哮喘",
    "J47": "支气管扩张",
    # Digestive
    "K21": "胃食管反流病",
    "K21.0": "胃食管反流病伴有食管炎",
    "K21.9": "胃食管反流病不伴有食管炎",
    "K25": "胃溃疡",
    "K25.3": "急性胃溃疡，不伴有出血或穿孔",
    "K25.4": "慢性或未特指的胃溃疡伴有出血",
    "K25.7": "慢性胃溃疡，不伴有出血或穿孔",
    "K25.9": "胃溃疡，未特指为急性或慢性，不伴有出血或穿孔",
    "K26": "十二指肠溃疡",
    "K26.3": "急性十二指肠溃疡，不伴有出血或穿孔",
    "K26.4": "慢性或未特指的十二指肠溃疡伴有出血",
    "K26.7": "慢性十二指肠溃疡，不伴有出血或穿孔",
    "K26.9": "十二指肠溃疡，未特指为急性或慢性，不伴有出血或穿孔",
    "K27": "消化性溃疡，部位未特指",
    "K28": "胃空肠溃疡",
    "K29": "胃炎和十二指肠炎",
    "K29.2": "酒精性胃炎",
    "K29.3": "慢性浅表性胃炎",
    "K29.4": "慢性萎缩性胃炎",
    "K29.5": "慢性胃炎，未特指",
    "K29.6": "其他的胃炎",
    "K29.7": "胃炎，未特指",
    "K29.8": "十二指肠炎",
    "K29.9": "胃十二指肠炎，未特指",
    "K50": "克罗恩病［局限性肠炎］",
    "K51": "溃疡性结肠炎",
    "K58": "肠易激综合征",
    "K70": "酒精性肝病",
    "K73": "慢性肝炎，不可归类在他处者",
    "K73.9": "慢性肝炎，未特指",
    "K74": "肝纤维化和肝硬化",
    "K74.0": "肝纤维化",
    "K74.3": "原发性胆汁性肝硬化",
    "K74.6": "其他和未特指的肝硬化",
    "K76": "其他的肝疾病",
    "K76.0": "脂肪肝，不可归类在他处者",
    "K80": "胆石症",
    # Skin
    "L20": "特应性皮炎",
    "L20.9": "特应性皮炎，未特指",
    "L30": "其他皮炎",
    "L30.0": "钱币状皮炎",
    "L30.1": "出汗障碍性湿疹［汗疱疹］",
    "L30.9": "皮炎，未特指",
    "L40": "银屑病",
    "L40.0": "寻常型银屑病",
    "L40.1": "泛发性脓疱型银屑病",
    "L40.4": "点滴状银屑病",
    "L40.5": "关节病型银屑病",
    "L40.9": "银屑病，未特指",
    # Musculoskeletal
    "M05": "类风湿因子阳性的类风湿关节炎",
    "M06": "其他类风湿关节炎",
    "M06.0": "类风湿因子阴性的类风湿关节炎",
    "M06.1": "成人斯蒂尔病",
    "M06.9": "类风湿关节炎，未特指",
    "M10": "痛风",
    "M10.0": "特发性痛风",
    "M10.1": "铅诱发的痛风",
    "M10.2": "药物诱发的痛风",
    "M10.3": "肾功能损害引起的痛风",
    "M10.4": "其他继发性痛风",
    "M10.9": "痛风，未特指",
    "M15": "多发性骨关节炎",
    "M16": "髋关节骨关节炎",
    "M16.0": "双侧原发性髋关节骨关节炎",
    "M16.1": "单侧原发性髋关节骨关节炎",
    "M16.9": "髋关节骨关节炎，未特指",
    "M17": "膝关节骨关节炎",
    "M17.0": "双侧原发性膝关节骨关节炎",
    "M17.1": "单侧原发性膝关节骨关节炎",
    "M17.9": "膝关节骨关节炎，未特指",
    "M18": "第一腕掌关节骨关节炎",
    "M19": "其他和未特指的骨关节炎",
    "M19.9": "骨关节炎，未特指",
    "M32": "系统性红斑狼疮",
    "M45": "强直性脊柱炎",
    "M47": "脊椎关节强硬",
    "M50": "颈椎间盘疾患",
    "M54": "背痛",
    "M54.5": "下背痛",
    "M80": "骨质疏松伴有病理性骨折",
    "M81": "骨质疏松不伴有病理性骨折",
    "M81.6": "局限性骨质疏松［Lequesne］",
    "M81.8": "其他的骨质疏松",
    # Genitourinary
    "N03": "慢性肾炎综合征",
    "N04": "肾病综合征",
    "N18": "慢性肾脏病",
    "N18.1": "慢性肾脏病1期",
    "N18.2": "慢性肾脏病2期",
    "N18.3": "慢性肾脏病3期",
    "N18.4": "慢性肾脏病4期",
    "N18.5": "慢性肾脏病5期",
    "N18.6": "终末期肾病",
    "N18.9": "慢性肾脏病，未特指",
    "N20": "肾和输尿管结石",
    "N20.0": "肾结石",
    "N40": "前列腺增生",
    "N40.0": "良性前列腺增生，不伴有下尿路症状",
    "N40.1": "良性前列腺增生，伴有下尿路症状",
    # Factors influencing health status
    "Z00": "无主诉和报告诊断者的一般检查和调查",
    "Z00.0": "一般医学检查",
    "Z09": "恶性肿瘤以外情况治疗后的随访检查",
    "Z76": "在其他情况下接触卫生服务的人",
    "Z76.0": "重复处方",
    "Z79": "长期（目前）药物治疗",
    "Z86.7": "循环系统疾病个人史",
    "Z95.5": "有冠状动脉血管成形术植入物和移植物",
}

# ---------------------------------------------------------------------------
# WHO ICD-10 codes that Chinese records use but ICD-10-CM does not contain.
# (code, name_zh, name_en) -- the English names are our own plain wording.
# Only codes inside the chronic-disease categories this app cares about.
# ---------------------------------------------------------------------------
_DM4 = [  # WHO fourth characters shared by E10-E14
    ("0", "伴有昏迷", "with coma"),
    ("1", "伴有酮症酸中毒", "with ketoacidosis"),
    ("2", "伴有肾并发症", "with kidney complications"),
    ("3", "伴有眼并发症", "with eye complications"),
    ("4", "伴有神经并发症", "with neurological complications"),
    ("5", "伴有周围循环并发症", "with peripheral circulatory complications"),
    ("6", "伴有其他特指的并发症", "with other specified complications"),
    ("7", "伴有多个并发症", "with multiple complications"),
    ("8", "伴有未特指的并发症", "with unspecified complications"),
    ("9", "不伴有并发症", "without complications"),
]


def _dm_family(cat: str, zh: str, en: str, en_prefix: str) -> list[tuple[str, str, str]]:
    rows = [(cat, zh, en)]
    for digit, zh4, en4 in _DM4:
        rows.append((f"{cat}.{digit}", zh + zh4, f"{en_prefix} {en4}"))
    return rows


WHO_SUPPLEMENT: list[tuple[str, str, str]] = [
    ("E05.5", "甲状腺危象", "Thyroid storm (thyroid crisis)"),
    ("E10.0", "1型糖尿病伴有昏迷", "Type 1 diabetes mellitus with coma"),
    ("E10.7", "1型糖尿病伴有多个并发症", "Type 1 diabetes mellitus with multiple complications"),
    ("E11.7", "2型糖尿病伴有多个并发症", "Type 2 diabetes mellitus with multiple complications"),
    (
        "E13.7",
        "其他特指的糖尿病伴有多个并发症",
        "Other specified diabetes mellitus with multiple complications",
    ),
    *_dm_family(
        "E12",
        "营养不良相关性糖尿病",
        "Malnutrition-related diabetes mellitus",
        "Malnutrition-related diabetes mellitus",
    ),
    *_dm_family(
        "E14",
        "未特指的糖尿病",
        "Diabetes mellitus, type not specified",
        "Diabetes mellitus, type not specified,",
    ),
    ("F41.2", "混合性焦虑和抑郁障碍", "Mixed anxiety and depressive disorder"),
    ("I13.9", "高血压性心脏和肾脏病，未特指", "Hypertensive heart and kidney disease, unspecified"),
    ("I50.0", "充血性心力衰竭", "Congestive heart failure"),
    (
        "I64",
        "脑卒中，未特指为出血或梗死",
        "Stroke, not specified whether haemorrhagic or ischaemic",
    ),
    (
        "I69.4",
        "脑卒中后遗症，未特指为出血或梗死",
        "Sequelae of stroke not specified whether haemorrhagic or ischaemic",
    ),
    ("J30.3", "其他的变应性鼻炎", "Other allergic rhinitis, such as perennial"),
    ("J30.4", "变应性鼻炎，未特指", "Allergic rhinitis, not specified"),
    ("J45.0", "以变应性为主的哮喘", "Asthma, predominantly allergic"),
    ("J45.1", "非变应性哮喘", "Asthma, non-allergic"),
    ("J45.8", "混合性哮喘", "Asthma, mixed allergic and non-allergic"),
    ("K29.1", "其他的急性胃炎", "Acute gastritis, other than haemorrhagic"),
    ("M19.8", "其他特指的骨关节炎", "Other specified osteoarthritis"),
    ("M81.1", "卵巢切除术后骨质疏松", "Osteoporosis after oophorectomy"),
    ("M81.2", "失用性骨质疏松", "Disuse osteoporosis"),
    ("M81.3", "手术后吸收不良性骨质疏松", "Osteoporosis from malabsorption after surgery"),
    ("M81.4", "药物性骨质疏松", "Osteoporosis caused by drugs"),
    ("M81.5", "特发性骨质疏松", "Idiopathic osteoporosis"),
    ("M81.9", "骨质疏松，未特指", "Osteoporosis, not specified"),
    (
        "Z09.0",
        "其他情况手术后的随访检查",
        "Follow-up examination after surgery (other than for malignant neoplasm)",
    ),
    (
        "Z09.1",
        "其他情况放射治疗后的随访检查",
        "Follow-up examination after radiotherapy (other than for malignant neoplasm)",
    ),
    (
        "Z09.2",
        "其他情况化学治疗后的随访检查",
        "Follow-up examination after chemotherapy (other than for malignant neoplasm)",
    ),
    ("Z09.3", "心理治疗后的随访检查", "Follow-up examination after psychotherapy"),
    ("Z09.4", "骨折治疗后的随访检查", "Follow-up examination after fracture treatment"),
    (
        "Z09.7",
        "其他情况联合治疗后的随访检查",
        "Follow-up examination after combined treatment (other than for malignant neoplasm)",
    ),
    (
        "Z09.8",
        "其他情况其他治疗后的随访检查",
        "Follow-up examination after other treatment (other than for malignant neoplasm)",
    ),
    (
        "Z09.9",
        "其他情况未特指治疗后的随访检查",
        "Follow-up examination after unspecified treatment (other than for malignant neoplasm)",
    ),
]

# ---------------------------------------------------------------------------
# A small sample of Chinese national clinical edition (国家临床版 2.0 /
# 医保版 2.0) extension codes seen on discharge summaries. Not the real table:
# hospitals load the edition they license (see README.md).
# (code, name_zh, name_en)
# ---------------------------------------------------------------------------
CN_EXTENSIONS: list[tuple[str, str, str]] = [
    ("E05.900", "甲状腺功能亢进症", "Hyperthyroidism"),
    ("E11.900", "2型糖尿病", "Type 2 diabetes mellitus"),
    ("E78.500", "高脂血症", "Hyperlipidaemia"),
    ("I10.x00", "高血压", "Hypertension"),
    ("I25.103", "冠状动脉粥样硬化性心脏病", "Coronary atherosclerotic heart disease"),
    ("I50.900", "心力衰竭", "Heart failure"),
    ("I63.900", "脑梗死", "Cerebral infarction"),
    ("I69.300", "脑梗死后遗症", "Sequelae of cerebral infarction"),
    ("J42.x00", "慢性支气管炎", "Chronic bronchitis"),
    (
        "J44.100",
        "慢性阻塞性肺疾病伴有急性加重",
        "Chronic obstructive pulmonary disease with acute exacerbation",
    ),
    ("J45.900", "哮喘", "Asthma"),
    ("M81.900", "骨质疏松", "Osteoporosis"),
    ("N40.x00", "前列腺增生", "Prostatic hyperplasia"),
]


def read_source(path: Path) -> tuple[bytes, str]:
    """Return the tabular XML bytes and a label naming where they came from."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [
                n
                for n in zf.namelist()
                if n.lower().endswith(".xml") and "tabular" in n.rsplit("/", 1)[-1].lower()
            ]
            if len(members) != 1:
                raise SystemExit(
                    f"{path}: expected exactly one *tabular*.xml member, found {members}"
                )
            return zf.read(members[0]), f"{path.name}!{members[0]}"
    return path.read_bytes(), path.name


def clean(text: str | None) -> str:
    return " ".join((text or "").split())


def parse_cm(xml_bytes: bytes) -> tuple[str, list[tuple[str, str, str]], list[str]]:
    """Return (version, [(code, name_en, kind)], [skipped category codes])."""
    # The input is the official tabular file the operator names on the command line,
    # not data from users; the standard library parser is fine for it.
    try:
        root = ET.parse(io.BytesIO(xml_bytes)).getroot()  # noqa: S314
    except ET.ParseError as exc:
        raise SystemExit(f"not an XML file: {exc}") from exc
    if root.tag != "ICD10CM.tabular":
        raise SystemExit(f"unexpected root element <{root.tag}>; want <ICD10CM.tabular>")
    version = clean(root.findtext("version"))
    rows: list[tuple[str, str, str]] = []
    skipped: list[str] = []
    for chapter in root.findall("chapter"):
        for section in chapter.findall("section"):
            for cat in section.findall("diag"):
                code = clean(cat.findtext("name"))
                if not CATEGORY_RE.match(code):
                    # ICD-10-CM-only categories such as M1A, C4A, Z3A.
                    skipped.append(code)
                    continue
                rows.append((code, clean(cat.findtext("desc")), "category"))
                for sub in cat.findall("diag"):
                    scode = clean(sub.findtext("name"))
                    if SUBCATEGORY_RE.match(scode):
                        rows.append((scode, clean(sub.findtext("desc")), "subcategory"))
    return version, rows, skipped


Row = dict[str, str]


def build(
    xml_bytes: bytes, with_supplement: bool = True
) -> tuple[str, list[Row], list[str], list[str]]:
    version, cm_rows, skipped = parse_cm(xml_bytes)
    table: dict[str, Row] = {}
    problems: list[str] = []

    def add(code: str, name_zh: str, name_en: str, kind: str) -> None:
        if code in table:
            problems.append(f"duplicate code {code}")
            return
        table[code] = {"code": code, "name_zh": name_zh, "name_en": name_en, "kind": kind}

    for code, name_en, kind in cm_rows:
        add(code, "", name_en, kind)
    if with_supplement:
        for code, zh, en in WHO_SUPPLEMENT:
            add(code, zh, en, "category" if CATEGORY_RE.match(code) else "subcategory")
    for code, zh, en in CN_EXTENSIONS:
        add(code, zh, en, "cn_extension")

    for code, zh in ZH_NAMES.items():
        if code not in table:
            problems.append(f"ZH_NAMES has {code}, which is not in the table")
        elif table[code]["name_zh"]:
            problems.append(f"{code} has a Chinese name twice")
        else:
            table[code]["name_zh"] = zh

    rows = [table[c] for c in sorted(table)]
    problems += validate(rows)
    return version, rows, skipped, problems


def validate(rows: list[Row]) -> list[str]:
    problems: list[str] = []
    codes = [r["code"] for r in rows]
    present = set(codes)
    if len(present) != len(codes):
        problems.append("duplicate codes")
    if codes != sorted(codes):
        problems.append("rows are not sorted by code")
    for r in rows:
        code = r["code"]
        if not CODE_RE.match(code):
            problems.append(f"{code}: does not match {CODE_RE.pattern}")
        if r["kind"] not in ("category", "subcategory", "cn_extension"):
            problems.append(f"{code}: unknown kind {r['kind']!r}")
        if r["kind"] == "category" and not CATEGORY_RE.match(code):
            problems.append(f"{code}: kind category but not a three-character code")
        if r["kind"] != "category" and code[:3] not in present:
            problems.append(f"{code}: its category {code[:3]} is missing")
        if not r["name_en"]:
            problems.append(f"{code}: empty English name")
        for field in ("name_zh", "name_en"):
            if any(ch in r[field] for ch in "\r\n\t"):
                problems.append(f"{code}: control character in {field}")
    return problems


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="ICD-10-CM tabular XML, or a .zip/.whl containing it")
    ap.add_argument("-o", "--output", type=Path, default=here / "icd10.csv")
    ap.add_argument(
        "--cm-only", action="store_true", help="leave out the hand-written WHO ICD-10 supplement"
    )
    args = ap.parse_args(argv)

    xml_bytes, label = read_source(args.source)
    version, rows, skipped, problems = build(xml_bytes, with_supplement=not args.cm_only)
    if problems:
        for p in problems:
            print("error:", p, file=sys.stderr)
        return 1

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    args.output.write_bytes(data)

    counts: dict[str, int] = {}
    for r in rows:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    print(
        f"source: {label} (ICD-10-CM version {version}), "
        f"sha256 {hashlib.sha256(xml_bytes).hexdigest()}"
    )
    print(f"skipped ICD-10-CM categories outside the code pattern: {' '.join(skipped)}")
    print(f"wrote {args.output}: {len(rows)} rows, {len(data)} bytes")
    for kind in ("category", "subcategory", "cn_extension"):
        print(f"  {kind}: {counts.get(kind, 0)}")
    print(f"  with name_zh: {sum(1 for r in rows if r['name_zh'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
