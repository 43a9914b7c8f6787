//! The resident card: who the person is, where they live, whom to call, what they need
//! (PLATFORMS.md, the Guangdong elder-database template), and the rules that keep it sound.
//!
//! The codes of the template are kept as words (`"alone"`, not `1`) so that a card read back
//! says what it means; [`codes`] maps each template code to its word.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Template codes and the words the card stores for them (PLATFORMS.md "Codes").
pub mod codes {
    /// 血型: 1 A, 2 B, 3 AB, 4 O, 5 other.
    pub const BLOOD_TYPE: &[&str] = &["A", "B", "AB", "O", "other"];
    /// 病例(史), multi-choice.
    pub const MEDICAL_HISTORY: &[&str] = &[
        "hypertension",
        "coronary_heart_disease",
        "diabetes",
        "depression",
        "stroke",
        "dementia",
        "gastrointestinal",
        "urinary",
        "other",
    ];
    /// 婚姻状况.
    pub const MARITAL_STATUS: &[&str] = &["unmarried", "married", "widowed", "divorced"];
    /// 身体状况.
    pub const PHYSICAL_CONDITION: &[&str] = &["self_care", "semi_self_care", "dependent"];
    /// 居住情况.
    pub const LIVING_SITUATION: &[&str] = &[
        "alone",
        "with_spouse",
        "with_children",
        "with_parents",
        "care_home",
    ];
    /// 经济来源, multi-choice.
    pub const INCOME: &[&str] = &[
        "pension",
        "urban_three_no",
        "rural_five_guarantee",
        "minimum_living_allowance",
        "low_income",
        "other",
    ];
    /// 文化程度.
    pub const EDUCATION: &[&str] = &[
        "illiterate",
        "barely_literate",
        "primary",
        "junior_middle",
        "senior_middle",
        "university",
    ];
    /// 宗教信仰.
    pub const RELIGION: &[&str] = &["catholic", "christian", "buddhist", "islam", "other"];
    /// 政治面貌.
    pub const POLITICAL_STATUS: &[&str] = &["cpc_member", "democratic_parties", "masses"];
    /// 熟悉语言, multi-choice.
    pub const LANGUAGE: &[&str] = &["mandarin", "chaoshan", "cantonese", "hakka", "other"];
    /// 用户类型, in the paper form's order.
    pub const USER_TYPE: &[&str] = &["government_purchased", "enterprise_purchased", "self_paid"];
    /// 希望提供服务, multi-choice, in the paper form's order.
    pub const SERVICES: &[&str] = &[
        "basic",
        "housekeeping",
        "daily_care",
        "meals",
        "rehabilitation_nursing",
        "medical_care",
        "emotional_comfort",
        "culture_recreation",
        "safety_assistance",
        "referral",
        "legal_aid",
        "hospice",
        "other",
    ];

    /// The word for 1-based template code `code` of `table`.
    pub fn word(table: &[&'static str], code: u32) -> Option<&'static str> {
        table.get((code as usize).checked_sub(1)?).copied()
    }
}

/// 性别.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Gender {
    /// 男.
    Male,
    /// 女.
    Female,
}

/// A postal address as the template splits it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Address {
    /// 省份.
    pub province: Option<String>,
    /// 地市.
    pub city: Option<String>,
    /// 区(县).
    pub district: Option<String>,
    /// 街道.
    pub street: Option<String>,
    /// 详细地址.
    pub detail: Option<String>,
    /// 居(村)委会名称.
    pub committee: Option<String>,
    /// 居(村)委会电话.
    pub committee_phone: Option<String>,
    /// Latitude of the residence, WGS-84, for the distance check at a visit's check-in.
    pub lat: Option<f64>,
    /// Longitude.
    pub lon: Option<f64>,
}

/// Someone to call: an emergency contact, the relative, the neighbour, the paired volunteer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Contact {
    /// 姓名.
    pub name: String,
    /// 关系 (son, daughter, …), free text.
    pub relation: Option<String>,
    /// 电话.
    pub phone: Option<String>,
    /// 地址.
    pub address: Option<String>,
}

/// At most this many emergency contacts (第一/第二/第三紧急联系人).
pub const MAX_CONTACTS: usize = 3;

/// Everything about a resident beyond the name, region, time zone, labels and thresholds the
/// rules use. Every field may be absent: a card entered by hand grows over time; the
/// template import requires its starred columns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Card {
    /// 身份证号 (GB 11643), upper-case `X`.
    pub id_number: Option<String>,
    /// 性别.
    pub gender: Option<Gender>,
    /// 出生日期.
    pub birth_date: Option<NaiveDate>,
    /// 民族, as written (汉).
    pub ethnicity: Option<String>,
    /// 联系手机 and other numbers of the resident.
    pub phones: Vec<String>,
    /// 熟悉语言 ([`codes::LANGUAGE`]).
    pub languages: Vec<String>,
    /// 用户类型 ([`codes::USER_TYPE`]).
    pub user_type: Option<String>,
    /// 户籍 address.
    pub household_address: Option<Address>,
    /// 常住 address: where help goes.
    pub residence_address: Option<Address>,
    /// 宗教信仰 ([`codes::RELIGION`]).
    pub religion: Option<String>,
    /// 政治面貌 ([`codes::POLITICAL_STATUS`]).
    pub political_status: Option<String>,
    /// 居住情况 ([`codes::LIVING_SITUATION`]).
    pub living_situation: Option<String>,
    /// 婚姻状况 ([`codes::MARITAL_STATUS`]).
    pub marital_status: Option<String>,
    /// 身体状况 ([`codes::PHYSICAL_CONDITION`]).
    pub physical_condition: Option<String>,
    /// 文化程度 ([`codes::EDUCATION`]).
    pub education: Option<String>,
    /// 经济来源 ([`codes::INCOME`]).
    pub income: Vec<String>,
    /// 参加工作时间(年).
    pub work_start_year: Option<i32>,
    /// 离退休时间(年).
    pub retirement_year: Option<i32>,
    /// 原所属单位.
    pub former_employer: Option<String>,
    /// 是否已享受高龄津贴.
    pub old_age_allowance: Option<bool>,
    /// 血型 ([`codes::BLOOD_TYPE`]).
    pub blood_type: Option<String>,
    /// 病例(史) ([`codes::MEDICAL_HISTORY`]).
    pub medical_history: Vec<String>,
    /// Free medical notes (allergies, medication).
    pub medical_notes: Option<String>,
    /// 第一/第二/第三紧急联系人, in calling order.
    pub contacts: Vec<Contact>,
    /// 家属/亲戚.
    pub relative: Option<Contact>,
    /// 邻居.
    pub neighbour: Option<Contact>,
    /// 结对 (the paired volunteer).
    pub volunteer: Option<Contact>,
    /// Where the key is (key safe code location, neighbour holds one, …).
    pub key_safe: Option<String>,
    /// 希望提供服务 ([`codes::SERVICES`]).
    pub services_wanted: Vec<String>,
    /// 是否需要手机.
    pub needs_phone: Option<bool>,
}

/// GB 11643-1999 §8.2 weights of the first 17 digits.
const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];

/// The check character of the first 17 digits of an ID-card number (GB 11643-1999 §8.2):
/// `(12 − Σ dᵢ·wᵢ mod 11) mod 11`, `X` for 10. `None` when the 17 are not all digits.
pub fn id_check_char(first17: &str) -> Option<char> {
    if first17.len() != 17 || !first17.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sum: u32 = first17
        .bytes()
        .zip(ID_WEIGHTS)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    let check = (12 - sum % 11) % 11;
    Some(if check == 10 {
        'X'
    } else {
        char::from(b'0' + check as u8)
    })
}

/// What is wrong with an ID-card number by itself, if anything: its shape, its check
/// character (GB 11643-1999 §8.2) or its birth date (digits 7–14).
pub fn id_number_problem(id: &str) -> Option<String> {
    if id.len() != 18
        || !id.is_ascii()
        || !id[..17].bytes().all(|b| b.is_ascii_digit())
        || !matches!(id.as_bytes()[17], b'0'..=b'9' | b'X')
    {
        return Some("an ID-card number is 17 digits and a check digit or X".into());
    }
    let expected = id_check_char(&id[..17])?;
    if id.as_bytes()[17] != expected as u8 {
        return Some(format!(
            "check character {} is wrong (GB 11643: {expected} for these 17 digits)",
            &id[17..]
        ));
    }
    if id_birth_date(id).is_none() {
        return Some(format!("digits 7–14 ({}) are not a date", &id[6..14]));
    }
    None
}

/// The birth date digits 7–14 of an 18-character ID-card number carry.
pub fn id_birth_date(id: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(id.get(6..14)?, "%Y%m%d").ok()
}

/// The gender digit 17 of an ID-card number gives: odd for men, even for women.
pub fn id_gender(id: &str) -> Option<Gender> {
    let d = id.as_bytes().get(16)?;
    d.is_ascii_digit().then(|| {
        if (d - b'0') % 2 == 1 {
            Gender::Male
        } else {
            Gender::Female
        }
    })
}

/// `440111********6789`: the first six (the issuing area) and last four characters.
pub fn mask_id_number(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 10 {
        return "*".repeat(chars.len());
    }
    let n = chars.len();
    chars[..6]
        .iter()
        .chain(std::iter::repeat_n(&'*', n - 10))
        .chain(&chars[n - 4..])
        .collect()
}

/// `138****5678`: the first three and last four digits.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() <= 7 {
        return "*".repeat(chars.len());
    }
    let n = chars.len();
    chars[..3]
        .iter()
        .chain(std::iter::repeat_n(&'*', n - 7))
        .chain(&chars[n - 4..])
        .collect()
}

/// A phone number: 3–20 of digits, with `+`, `-` and spaces between.
pub fn valid_phone(p: &str) -> bool {
    let digits = p.bytes().filter(u8::is_ascii_digit).count();
    (3..=20).contains(&digits)
        && p.len() <= 32
        && p.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b' '))
}

impl Card {
    /// Every problem with the card, each naming its field; empty when it is sound. `today`
    /// bounds dates (nobody is born in the future).
    pub fn problems(&self, today: NaiveDate) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(id) = &self.id_number {
            if let Some(p) = id_number_problem(id) {
                out.push(format!("id_number: {p}"));
            } else {
                if let (Some(g), Some(idg)) = (self.gender, id_gender(id))
                    && g != idg
                {
                    out.push(format!(
                        "gender: {g:?} disagrees with the ID number's digit 17 ({idg:?})"
                    ));
                }
                if let (Some(b), Some(idb)) = (self.birth_date, id_birth_date(id))
                    && b != idb
                {
                    out.push(format!(
                        "birth_date: {b} disagrees with the ID number's {idb}"
                    ));
                }
            }
        }
        if let Some(b) = self.birth_date {
            if b > today {
                out.push(format!("birth_date: {b} is in the future"));
            } else if b < MIN_BIRTH_DATE {
                out.push(format!("birth_date: {b} is before {MIN_BIRTH_DATE}"));
            }
        }
        for (field, year) in [
            ("work_start_year", self.work_start_year),
            ("retirement_year", self.retirement_year),
        ] {
            if let Some(p) = year.and_then(|y| year_problem(y, self.birth_date, today)) {
                out.push(format!("{field}: {p}"));
            }
        }
        for (i, p) in self.phones.iter().enumerate() {
            if !valid_phone(p) {
                out.push(format!("phones[{i}]: not a phone number"));
            }
        }
        if self.contacts.len() > MAX_CONTACTS {
            out.push(format!("contacts: at most {MAX_CONTACTS}"));
        }
        let people = self
            .contacts
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("contacts[{i}]"), c))
            .chain(
                [
                    ("relative", &self.relative),
                    ("neighbour", &self.neighbour),
                    ("volunteer", &self.volunteer),
                ]
                .into_iter()
                .filter_map(|(f, c)| Some((f.to_owned(), c.as_ref()?))),
            );
        for (field, c) in people {
            if c.name.trim().is_empty() {
                out.push(format!("{field}.name must not be empty"));
            }
            if c.phone.as_deref().is_some_and(|p| !valid_phone(p)) {
                out.push(format!("{field}.phone: not a phone number"));
            }
        }
        let one_of = [
            ("user_type", &self.user_type, codes::USER_TYPE),
            ("religion", &self.religion, codes::RELIGION),
            (
                "political_status",
                &self.political_status,
                codes::POLITICAL_STATUS,
            ),
            (
                "living_situation",
                &self.living_situation,
                codes::LIVING_SITUATION,
            ),
            (
                "marital_status",
                &self.marital_status,
                codes::MARITAL_STATUS,
            ),
            (
                "physical_condition",
                &self.physical_condition,
                codes::PHYSICAL_CONDITION,
            ),
            ("education", &self.education, codes::EDUCATION),
            ("blood_type", &self.blood_type, codes::BLOOD_TYPE),
        ];
        for (field, value, table) in one_of {
            if let Some(v) = value
                && !table.contains(&v.as_str())
            {
                out.push(format!("{field}: {v:?} is not one of {}", table.join(", ")));
            }
        }
        let many_of = [
            ("languages", &self.languages, codes::LANGUAGE),
            ("income", &self.income, codes::INCOME),
            (
                "medical_history",
                &self.medical_history,
                codes::MEDICAL_HISTORY,
            ),
            ("services_wanted", &self.services_wanted, codes::SERVICES),
        ];
        for (field, values, table) in many_of {
            for v in values {
                if !table.contains(&v.as_str()) {
                    out.push(format!("{field}: {v:?} is not one of {}", table.join(", ")));
                }
            }
        }
        for (field, a) in [
            ("household_address", &self.household_address),
            ("residence_address", &self.residence_address),
        ] {
            if let Some(a) = a {
                if a.lat.is_some_and(|v| !(-90.0..=90.0).contains(&v))
                    || a.lon.is_some_and(|v| !(-180.0..=180.0).contains(&v))
                {
                    out.push(format!("{field}: lat/lon out of range"));
                }
                if a.lat.is_some() != a.lon.is_some() {
                    out.push(format!("{field}: give both lat and lon, or neither"));
                }
            }
        }
        let long_texts = [
            ("ethnicity", &self.ethnicity, 32),
            ("former_employer", &self.former_employer, 200),
            ("medical_notes", &self.medical_notes, 2000),
            ("key_safe", &self.key_safe, 500),
        ];
        for (field, v, max) in long_texts {
            if v.as_deref().is_some_and(|v| v.chars().count() > max) {
                out.push(format!("{field} is longer than {max} characters"));
            }
        }
        out
    }

    /// The labels the card implies, so that rules select residents by them without anybody
    /// writing them by hand: living alone → `lives_alone`, dementia in the medical history →
    /// `dementia`.
    pub fn derived_labels(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self.living_situation.as_deref() == Some("alone") {
            out.push(("lives_alone", "true"));
        }
        if self.medical_history.iter().any(|h| h == "dementia") {
            out.push(("dementia", "true"));
        }
        out
    }

    /// The card as a user who may not see ID-card or phone numbers gets it.
    pub fn masked(&self) -> Card {
        let mut c = self.clone();
        c.id_number = c.id_number.as_deref().map(mask_id_number);
        c.phones = c.phones.iter().map(|p| mask_phone(p)).collect();
        let people = c
            .contacts
            .iter_mut()
            .chain(c.relative.as_mut())
            .chain(c.neighbour.as_mut())
            .chain(c.volunteer.as_mut());
        for person in people {
            person.phone = person.phone.as_deref().map(mask_phone);
        }
        for a in [&mut c.household_address, &mut c.residence_address]
            .into_iter()
            .flatten()
        {
            a.committee_phone = a.committee_phone.as_deref().map(mask_phone);
        }
        c
    }

    /// Every phone number on the card, labelled by whom it reaches, in calling order
    /// (`resident`, `contact1`…`contact3`, `relative`, `neighbour`, `volunteer`).
    pub fn numbers(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .phones
            .iter()
            .map(|p| ("resident".to_owned(), p.clone()))
            .collect();
        for (i, c) in self.contacts.iter().enumerate() {
            if let Some(p) = &c.phone {
                out.push((format!("contact{}", i + 1), p.clone()));
            }
        }
        for (who, c) in [
            ("relative", &self.relative),
            ("neighbour", &self.neighbour),
            ("volunteer", &self.volunteer),
        ] {
            if let Some(p) = c.as_ref().and_then(|c| c.phone.clone()) {
                out.push((who.to_owned(), p));
            }
        }
        out
    }
}

/// Nobody alive was born before this; a card that says so is a typing error.
pub const MIN_BIRTH_DATE: NaiveDate = match NaiveDate::from_ymd_opt(1900, 1, 1) {
    Some(d) => d,
    None => unreachable!(),
};

/// Youngest age at which a working life recorded in the template can start.
const MIN_WORKING_AGE: i32 = 14;

/// What is implausible about a year in a person's life (Yunnan's "zombie data": admissions in
/// 1905): before their working age, before 1920, or in the future.
pub fn year_problem(year: i32, birth: Option<NaiveDate>, today: NaiveDate) -> Option<String> {
    use chrono::Datelike;
    if year > today.year() {
        return Some(format!("{year} is in the future"));
    }
    if let Some(b) = birth
        && year < b.year() + MIN_WORKING_AGE
    {
        return Some(format!(
            "{year} is before the age of {MIN_WORKING_AGE} for someone born in {}",
            b.year()
        ));
    }
    if year < 1920 {
        return Some(format!("{year} is not a plausible year (before 1920)"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_character_follows_gb_11643() {
        // The standard's own worked example (GB 11643-1999 Appendix A).
        assert_eq!(id_check_char("11010519491231002"), Some('X'));
        assert_eq!(id_number_problem("11010519491231002X"), None);
        assert!(
            id_number_problem("110105194912310021")
                .unwrap()
                .contains("check character")
        );
        // The Guangdong template's example row: wrong check character.
        assert!(id_number_problem("440111196012236789").is_some());
        assert_eq!(id_gender("11010519491231002X"), Some(Gender::Female));
        assert_eq!(
            id_birth_date("11010519491231002X"),
            NaiveDate::from_ymd_opt(1949, 12, 31)
        );
        assert!(id_number_problem("1101051949123100").is_some());
        assert!(id_number_problem("11010519491331002X").is_some());
    }

    #[test]
    fn masks_keep_the_ends() {
        assert_eq!(mask_id_number("440111196012236789"), "440111********6789");
        assert_eq!(mask_phone("13812345678"), "138****5678");
        assert_eq!(mask_phone("120"), "***");
        let card = Card {
            id_number: Some("11010519491231002X".into()),
            phones: vec!["13812345678".into()],
            contacts: vec![Contact {
                name: "王五".into(),
                phone: Some("13900001111".into()),
                ..Contact::default()
            }],
            ..Card::default()
        };
        let m = card.masked();
        let text = serde_json::to_string(&m).unwrap();
        assert!(!text.contains("19491231") && !text.contains("12345678"));
        assert!(!text.contains("00001111") || text.contains("139****1111"));
    }

    #[test]
    fn a_card_agrees_with_its_id_number() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        let mut card = Card {
            id_number: Some("11010519491231002X".into()),
            gender: Some(Gender::Male),
            birth_date: NaiveDate::from_ymd_opt(1949, 12, 30),
            work_start_year: Some(1905),
            living_situation: Some("alone".into()),
            medical_history: vec!["dementia".into()],
            ..Card::default()
        };
        let p = card.problems(today).join("\n");
        assert!(p.contains("gender"), "{p}");
        assert!(p.contains("birth_date"), "{p}");
        assert!(p.contains("work_start_year"), "{p}");
        card.gender = Some(Gender::Female);
        card.birth_date = NaiveDate::from_ymd_opt(1949, 12, 31);
        card.work_start_year = Some(1966);
        assert!(card.problems(today).is_empty());
        assert_eq!(
            card.derived_labels(),
            vec![("lives_alone", "true"), ("dementia", "true")]
        );
    }
}
