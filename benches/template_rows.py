#!/usr/bin/env python3
"""Rows of the Guangdong elder-database import template (PLATFORMS.md, 附件5) for timing an
import: the published header row and N valid, distinct rows.

    python3 benches/template_rows.py N [--gb18030] [--seed S] > rows.csv

Every row passes src/domain/import.rs: a GB 11643-1999 ID number with the right check
character (§8.2), its gender digit agreeing with 性别 and its digits 7-14 with 出生日期, codes in
range, plausible phones and years. ID numbers are distinct across all N rows (up to 180 million).
The text is UTF-8 (no BOM) or, with --gb18030, GB18030 as Chinese spreadsheets save it.
Standard library only; the same N and seed give the same file.
"""

import argparse
import csv
import datetime
import random
import sys

# The header row exactly as published; `*` marks a required column.
HEADER = [
    "姓名*", "性别*", "身份证号*", "出生日期", "民族*", "联系手机*", "熟悉语言", "用户类型",
    "户籍省份*", "户籍地市*", "户籍区(县)*", "户籍街道*", "户籍详细地址*", "户籍居(村)委会名称",
    "户籍居(村)委会电话", "常住省份*", "常住地市*", "常住区(县)", "常住街道*", "常住详细地址*",
    "常住居(村)委会名称", "常住居(村)委会电话", "宗教信仰", "政治面貌", "居住情况*", "婚姻状况*",
    "身体状况*", "文化程度*", "经济来源*", "参加工作时间(年)", "离退休时间(年)", "原所属单位",
    "是否已享受高龄津贴", "血型", "病例(史)",
    "第一紧急联系人姓名", "第一紧急联系人关系", "第一紧急联系人电话", "第一紧急联系人地址",
    "第二紧急联系人姓名", "第二紧急联系人关系", "第二紧急联系人电话", "第二紧急联系人地址",
    "第三紧急联系人姓名", "第三紧急联系人关系", "第三紧急联系人电话", "第三紧急联系人地址",
    "家属/亲戚姓名", "与老年关系", "家属/联系电话", "邻居姓名", "邻居联系电话", "结对姓名", "结对电话",
    "希望提供服务*", "是否需要手机",
]

# GB 11643-1999 §8.2: weights of the first 17 digits; check = (12 - sum mod 11) mod 11, X for 10.
WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]

# Guangzhou districts (GB/T 2260 codes) and their names.
AREAS = [
    ("440103", "荔湾区"), ("440104", "越秀区"), ("440105", "海珠区"), ("440106", "天河区"),
    ("440111", "白云区"), ("440112", "黄埔区"), ("440113", "番禺区"), ("440114", "花都区"),
    ("440115", "南沙区"), ("440117", "从化区"), ("440118", "增城区"), ("440183", "增城区"),
]
FIRST_BIRTH = datetime.date(1925, 1, 1)
BIRTH_DAYS = 15000  # births from 1925 to 1966

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉兰萍建国建华志强国华金凤淑珍德明"
STREETS = ["石牌街道", "沙河街道", "五山街道", "员村街道", "车陂街道", "冼村街道", "猎德街道", "林和街道"]
RELATIONS = ["儿子", "女儿", "配偶", "孙子", "侄女", "儿媳"]


def check_char(first17):
    total = sum(int(d) * w for d, w in zip(first17, WEIGHTS))
    c = (12 - total % 11) % 11
    return "X" if c == 10 else str(c)


def person(rng):
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.randint(1, 2)))


def mobile(rng):
    return "1" + rng.choice("3456789") + "".join(rng.choice("0123456789") for _ in range(9))


def codes(rng, n, most):
    """1 to `most` distinct codes of 1..n, joined the template's way."""
    picked = rng.sample(range(1, n + 1), rng.randint(1, min(most, n)))
    return "、".join(str(c) for c in sorted(picked))


def row(i, rng, this_year):
    # i -> (area, birth day, sequence): distinct for i < 12 * 15000 * 1000.
    area, district = AREAS[i % len(AREAS)]
    birth = FIRST_BIRTH + datetime.timedelta(days=(i // len(AREAS)) % BIRTH_DAYS)
    seq = (i // (len(AREAS) * BIRTH_DAYS)) % 1000
    first17 = f"{area}{birth:%Y%m%d}{seq:03d}"
    id_number = first17 + check_char(first17)
    gender = "男" if seq % 2 == 1 else "女"  # digit 17: odd for men, even for women
    work = birth.year + rng.randint(16, 24)
    retired = birth.year + (60 if gender == "男" else 55)
    street = rng.choice(STREETS)
    detail = f"{rng.choice(['天河路', '中山大道', '黄埔大道', '体育西路'])}{rng.randint(1, 999)}号"
    cells = {
        "姓名*": person(rng),
        "性别*": gender,
        "身份证号*": id_number,
        "出生日期": f"{birth:%Y/%m/%d}",
        "民族*": rng.choice(["汉", "汉", "汉", "壮", "回", "满"]),
        "联系手机*": mobile(rng),
        "熟悉语言": codes(rng, 5, 2),
        "用户类型": str(rng.randint(1, 3)),
        "户籍省份*": "广东省",
        "户籍地市*": "广州市",
        "户籍区(县)*": district,
        "户籍街道*": street,
        "户籍详细地址*": detail,
        "户籍居(村)委会名称": street.replace("街道", "社区居委会"),
        "户籍居(村)委会电话": f"020-{rng.randint(30000000, 89999999)}",
        "常住省份*": "广东省",
        "常住地市*": "广州市",
        "常住区(县)": district,
        "常住街道*": street,
        "常住详细地址*": f"{detail}{rng.randint(1, 30)}0{rng.randint(1, 6)}",
        "宗教信仰": str(rng.randint(1, 5)) if rng.random() < 0.2 else "",
        "政治面貌": str(rng.randint(1, 3)),
        "居住情况*": str(rng.randint(1, 5)),
        "婚姻状况*": str(rng.randint(1, 4)),
        "身体状况*": str(rng.randint(1, 3)),
        "文化程度*": str(rng.randint(1, 6)),
        "经济来源*": codes(rng, 6, 2),
        "参加工作时间(年)": str(work) if work <= this_year else "",
        "离退休时间(年)": str(retired) if retired <= this_year else "",
        "原所属单位": rng.choice(["", "广州市第一棉纺厂", "天河区供销社", "广州钢铁厂"]),
        "是否已享受高龄津贴": "是" if this_year - birth.year >= 80 else "否",
        "血型": str(rng.randint(1, 5)),
        "病例(史)": codes(rng, 9, 3) if rng.random() < 0.7 else "",
        "第一紧急联系人姓名": person(rng),
        "第一紧急联系人关系": rng.choice(RELATIONS),
        "第一紧急联系人电话": mobile(rng),
        "第一紧急联系人地址": detail,
        "希望提供服务*": codes(rng, 13, 3),
        "是否需要手机": rng.choice(["是", "否"]),
    }
    if rng.random() < 0.5:
        cells["第二紧急联系人姓名"] = person(rng)
        cells["第二紧急联系人关系"] = rng.choice(RELATIONS)
        cells["第二紧急联系人电话"] = mobile(rng)
    if rng.random() < 0.3:
        cells["邻居姓名"] = person(rng)
        cells["邻居联系电话"] = mobile(rng)
    if rng.random() < 0.3:
        cells["家属/亲戚姓名"] = person(rng)
        cells["与老年关系"] = rng.choice(RELATIONS)
        cells["家属/联系电话"] = mobile(rng)
    if rng.random() < 0.2:
        cells["结对姓名"] = person(rng)
        cells["结对电话"] = mobile(rng)
    return [cells.get(h, "") for h in HEADER]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", type=int, help="number of data rows")
    p.add_argument("--gb18030", action="store_true", help="write GB18030 instead of UTF-8")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = p.parse_args()
    if not 0 <= args.n <= len(AREAS) * BIRTH_DAYS * 1000:
        p.error("n out of range")
    rng = random.Random(args.seed)
    this_year = datetime.date.today().year
    out = open(sys.stdout.fileno(), "w", encoding="gb18030" if args.gb18030 else "utf-8",
               newline="", closefd=False)
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(HEADER)
    for i in range(args.n):
        w.writerow(row(i, rng, this_year))
    out.flush()


if __name__ == "__main__":
    main()
