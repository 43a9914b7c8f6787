//! Batch import of the Guangdong elder-database template (PLATFORMS.md, "Guangdong provincial
//! home-care platform", 附件5): read an uploaded `.xlsx` or CSV into a [`Table`], then check
//! every row and turn the sound ones into [`Card`]s.
//!
//! Two steps, because they fail differently. [`read_table`] fails the whole file
//! ([`ImportError`]): it is not a spreadsheet, its text is neither UTF-8 nor GB18030, its header
//! row lacks a required column or has one we do not know. [`validate`] never fails: it sorts
//! rows into sound ones ([`ImportRow`]) and [`Rejection`]s, each naming the data row, the
//! published column header and what is wrong, so an operator can fix the sheet and import
//! again.
//!
//! Nothing here prints an ID-card or phone number in full: reasons and errors are shown to
//! operators and end up in logs. Values quoted in a reason go through [`shown`], which masks
//! every run of seven or more digits.
//!
//! Choices the template leaves open, made here:
//! - 性别 is `男`/`女`, or `1`/`2` as coded by GB/T 2261.1-2003 (1 male, 2 female).
//! - When digit 17 of the ID number disagrees with 性别, the rejection is on `性别*`; when
//!   digits 7–14 disagree with 出生日期, it is on `出生日期`. A wrong check character is on
//!   `身份证号*`. So the template's own example row gets two rejections, one per column.
//! - Several problems in one column make one rejection, their reasons joined by `; `.
//! - Yes/no columns take `是`/`否`, `Y`/`N`, `yes`/`no`, `1`/`0`, `TRUE`/`FALSE` (any case).
//! - 血型 takes its code (1–5) or the letters `A`, `B`, `AB`, `O`.
//! - 联系手机 may hold several numbers separated like a multi-choice field (`、` `,` `，` `;`
//!   `/`); the first becomes `phones[0]`.
//! - Machine-read columns (ID, phones, dates, years, codes) accept full-width digits and
//!   punctuation (`４４０１…`, `１９６０／１２／２３`), which Chinese input methods produce.
//! - Rows are numbered from 1 at the first data row, counting blank rows (which are skipped),
//!   so row 3 is the spreadsheet's third line under the header.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Cursor;

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use super::card::{
    Address, Card, Contact, Gender, MIN_BIRTH_DATE, codes, id_birth_date, id_check_char, id_gender,
    id_number_problem, valid_phone, year_problem,
};

/// At most this many data rows in one file: a larger one is refused whole rather than read
/// into memory (a county's roll is a few tens of thousands; split bigger imports).
pub const MAX_ROWS: usize = 100_000;

/// At most this many columns: the template has 56; anything far beyond is not the template.
pub const MAX_COLUMNS: usize = 128;

/// Longest free text (addresses, employer) accepted, in characters.
const MAX_TEXT: usize = 200;
/// Longest name accepted, in characters.
const MAX_NAME: usize = 50;
/// Longest 民族, in characters (the card's own limit).
const MAX_ETHNICITY: usize = 32;

/// The template's header row exactly as published (附件5), in its order; `*` marks a required
/// column. [`Rejection::column`] is always one of these.
pub const COLUMNS: [&str; 56] = [
    "姓名*",
    "性别*",
    "身份证号*",
    "出生日期",
    "民族*",
    "联系手机*",
    "熟悉语言",
    "用户类型",
    "户籍省份*",
    "户籍地市*",
    "户籍区(县)*",
    "户籍街道*",
    "户籍详细地址*",
    "户籍居(村)委会名称",
    "户籍居(村)委会电话",
    "常住省份*",
    "常住地市*",
    "常住区(县)",
    "常住街道*",
    "常住详细地址*",
    "常住居(村)委会名称",
    "常住居(村)委会电话",
    "宗教信仰",
    "政治面貌",
    "居住情况*",
    "婚姻状况*",
    "身体状况*",
    "文化程度*",
    "经济来源*",
    "参加工作时间(年)",
    "离退休时间(年)",
    "原所属单位",
    "是否已享受高龄津贴",
    "血型",
    "病例(史)",
    "第一紧急联系人姓名",
    "第一紧急联系人关系",
    "第一紧急联系人电话",
    "第一紧急联系人地址",
    "第二紧急联系人姓名",
    "第二紧急联系人关系",
    "第二紧急联系人电话",
    "第二紧急联系人地址",
    "第三紧急联系人姓名",
    "第三紧急联系人关系",
    "第三紧急联系人电话",
    "第三紧急联系人地址",
    "家属/亲戚姓名",
    "与老年关系",
    "家属/联系电话",
    "邻居姓名",
    "邻居联系电话",
    "结对姓名",
    "结对电话",
    "希望提供服务*",
    "是否需要手机",
];

/// A template column, by its position in [`COLUMNS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Name,
    Gender,
    IdNumber,
    BirthDate,
    Ethnicity,
    Mobile,
    Languages,
    UserType,
    HProvince,
    HCity,
    HDistrict,
    HStreet,
    HDetail,
    HCommittee,
    HCommitteePhone,
    RProvince,
    RCity,
    RDistrict,
    RStreet,
    RDetail,
    RCommittee,
    RCommitteePhone,
    Religion,
    Political,
    Living,
    Marital,
    Physical,
    Education,
    Income,
    WorkStart,
    Retirement,
    FormerEmployer,
    Allowance,
    BloodType,
    MedicalHistory,
    C1Name,
    C1Relation,
    C1Phone,
    C1Address,
    C2Name,
    C2Relation,
    C2Phone,
    C2Address,
    C3Name,
    C3Relation,
    C3Phone,
    C3Address,
    RelativeName,
    RelativeRelation,
    RelativePhone,
    NeighbourName,
    NeighbourPhone,
    VolunteerName,
    VolunteerPhone,
    Services,
    NeedsPhone,
}

impl Col {
    /// The published header, `*` included.
    fn header(self) -> &'static str {
        COLUMNS[self as usize]
    }

    /// The header without its `*`, for use inside a sentence.
    fn label(self) -> &'static str {
        self.header().trim_end_matches('*')
    }

    fn required(self) -> bool {
        self.header().ends_with('*')
    }
}

/// Why a whole file cannot be imported. No variant carries a full ID or phone number: texts
/// from the file (unknown headers, parser messages) are masked with [`shown`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The upload has no bytes.
    #[error("the file is empty")]
    Empty,
    /// The bytes are some other kind of file (legacy `.xls`, PDF, an image, binary data).
    #[error("not a spreadsheet or CSV file: {0}; save the template as .xlsx or CSV")]
    NotATable(&'static str),
    /// An `.xlsx` the reader could not open or read.
    #[error("the .xlsx workbook cannot be read: {0}")]
    Xlsx(String),
    /// A CSV the reader could not read.
    #[error("the CSV file cannot be read: {0}")]
    Csv(String),
    /// The text is neither UTF-8 nor GB18030 (or not the declared charset).
    #[error(
        "the text on line {line} is not {expected}; save the file as \"CSV UTF-8\" or as .xlsx"
    )]
    Encoding {
        /// 1-based line of the first byte that could not be decoded.
        line: usize,
        /// What the text was tried as (`UTF-8 or GB18030`, or the declared charset).
        expected: &'static str,
    },
    /// No row carries the template's column names.
    #[error(
        "no header row: the first non-empty row has none of the template's column names (姓名*, 性别*, 身份证号*, …)"
    )]
    NoHeader,
    /// The header row lacks required columns or has columns the template does not have (a
    /// typing error in a header would otherwise drop that column's data silently).
    #[error("{}", header_message(.missing, .unknown))]
    Columns {
        /// Published headers of the required columns not found.
        missing: Vec<String>,
        /// Header cells that match no template column, as written (masked).
        unknown: Vec<String>,
    },
    /// Two header cells name the same template column.
    #[error("the column {0} appears twice in the header row")]
    DuplicateColumn(String),
    /// A data row has a value in a column whose header cell is empty.
    #[error(
        "row {row} has a value in column {column} ({letters}), which has no header; delete it or name the column"
    )]
    DataWithoutHeader {
        /// 1-based data row.
        row: usize,
        /// 1-based column number.
        column: usize,
        /// The spreadsheet's letters for the column (`A`, `BE`).
        letters: String,
    },
    /// More than [`MAX_ROWS`] data rows.
    #[error("the file has more than {MAX_ROWS} data rows; split it into smaller files")]
    TooManyRows,
    /// More than [`MAX_COLUMNS`] columns.
    #[error("the sheet has more than {MAX_COLUMNS} columns; it is not the template")]
    TooManyColumns,
}

impl ImportError {
    /// The line of an [`ImportError::Encoding`], 0 for other errors.
    fn line(&self) -> usize {
        match self {
            ImportError::Encoding { line, .. } => *line,
            _ => 0,
        }
    }
}

fn header_message(missing: &[String], unknown: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "the header row lacks the required column(s) {}",
            missing.join(", ")
        ));
    }
    if !unknown.is_empty() {
        parts.push(format!(
            "the header row has column(s) the template does not have: {} (check their spelling)",
            unknown.join(", ")
        ));
    }
    parts.join("; ")
}

/// An uploaded sheet: the header row mapped onto the template's columns, and the non-blank
/// data rows as trimmed text.
///
/// The cells of all rows share one string buffer (one allocation for the file, not one per
/// cell): a 50 000-row import has 2.8 million cells.
#[derive(Debug, Clone)]
pub struct Table {
    /// Header cells as written in the file, trimmed.
    headers: Vec<String>,
    /// For each template column ([`COLUMNS`] order), its position in the file, if present.
    slots: [Option<usize>; COLUMNS.len()],
    /// Every data cell's text, back to back.
    text: String,
    /// End offset in `text` of each cell, row after row.
    ends: Vec<usize>,
    /// Per data row: its 1-based number and the index in `ends` of its first cell.
    rows: Vec<(usize, usize)>,
    /// `(data row index, file column)` of numeric cells of 16 or more digits: the spreadsheet
    /// kept only 15 significant digits of them, so an ID typed as a number is already wrong.
    rounded: Vec<(usize, usize)>,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            headers: Vec::new(),
            slots: [None; COLUMNS.len()],
            text: String::new(),
            ends: Vec::new(),
            rows: Vec::new(),
            rounded: Vec::new(),
        }
    }
}

impl Table {
    /// The header cells as written in the file, trimmed, in file order.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// How many non-blank data rows there are.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no data rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The 1-based number of data row `index` (blank rows before it counted).
    pub fn row_number(&self, index: usize) -> Option<usize> {
        self.rows.get(index).map(|r| r.0)
    }

    /// The trimmed text of data row `index` in file column `column` (`""` when absent).
    pub fn cell(&self, index: usize, column: usize) -> &str {
        let Some(&(_, first)) = self.rows.get(index) else {
            return "";
        };
        let end_of_row = self.rows.get(index + 1).map_or(self.ends.len(), |r| r.1);
        let i = first + column;
        if i >= end_of_row {
            return "";
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..self.ends[i]).unwrap_or("")
    }

    /// The text of template column `col` in data row `index`.
    fn value(&self, index: usize, col: Col) -> &str {
        match self.slots[col as usize] {
            Some(c) => self.cell(index, c),
            None => "",
        }
    }

    fn was_rounded(&self, index: usize, col: Col) -> bool {
        self.slots[col as usize].is_some_and(|c| self.rounded.binary_search(&(index, c)).is_ok())
    }
}

/// Reads an uploaded template into a [`Table`].
///
/// `.xlsx` is recognised by its ZIP signature or by `content_type`, and its first worksheet is
/// read. Anything else is CSV (or tab-separated text, as Excel's "Unicode text" saves it): its
/// text is UTF-8 (a BOM is dropped) when it is valid UTF-8 and GB18030 otherwise, the encoding
/// of most spreadsheets saved in China; a `charset` of `gb18030`, `gbk` or `gb2312` in
/// `content_type` forces GB18030 (other charsets a browser may claim are not trusted: browsers
/// label by file name, not content). A UTF-16 BOM is honoured.
///
/// The header row is the first non-empty row; up to five title rows with a single cell before
/// it (such as "老年人信息导入模板") are skipped.
pub fn read_table(body: &[u8], content_type: Option<&str>) -> Result<Table, ImportError> {
    if body.is_empty() {
        return Err(ImportError::Empty);
    }
    let (mime, charset) = parse_content_type(content_type.unwrap_or(""));
    if body.starts_with(b"PK\x03\x04") || mime == XLSX_MIME {
        return read_xlsx(body);
    }
    if body.starts_with(b"PK\x05\x06") {
        return Err(ImportError::NotATable("an empty ZIP archive"));
    }
    if body.starts_with(b"\xD0\xCF\x11\xE0") {
        return Err(ImportError::NotATable("a legacy .xls workbook"));
    }
    if body.starts_with(b"%PDF") {
        return Err(ImportError::NotATable("a PDF document"));
    }
    let text = decode(body, charset.as_deref())?;
    if text.contains('\0') {
        return Err(ImportError::NotATable("binary data"));
    }
    read_csv(&text)
}

/// The media type of `.xlsx` (ECMA-376 Part 2, Annex F).
const XLSX_MIME: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// `(media type, charset)` of a `Content-Type` value, lower-cased.
fn parse_content_type(ct: &str) -> (String, Option<String>) {
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
    });
    (mime, charset)
}

/// The text of a CSV upload. See [`read_table`] for the rules.
fn decode<'b>(body: &'b [u8], charset: Option<&str>) -> Result<Cow<'b, str>, ImportError> {
    if let Some((enc, bom_len)) = encoding_rs::Encoding::for_bom(body) {
        let rest = &body[bom_len..];
        return if enc == encoding_rs::UTF_8 {
            std::str::from_utf8(rest).map(Cow::Borrowed).map_err(|e| {
                encoding_error(rest, e.valid_up_to(), "UTF-8 (it starts with a UTF-8 BOM)")
            })
        } else {
            decode_as(rest, enc, "UTF-16 (it starts with a UTF-16 BOM)")
        };
    }
    let forced_gb = charset.is_some_and(|c| {
        encoding_rs::Encoding::for_label(c.as_bytes())
            .is_some_and(|e| e == encoding_rs::GB18030 || e == encoding_rs::GBK)
    });
    if forced_gb {
        return decode_as(
            body,
            encoding_rs::GB18030,
            "GB18030 (as the upload declared)",
        );
    }
    match std::str::from_utf8(body) {
        Ok(s) => Ok(Cow::Borrowed(s)),
        // Neither: the line to fix is the first one that neither reading gets past.
        Err(e) => {
            decode_as(body, encoding_rs::GB18030, "UTF-8 or GB18030").map_err(|gb| match gb {
                ImportError::Encoding { line, expected } => ImportError::Encoding {
                    line: line.max(encoding_error(body, e.valid_up_to(), expected).line()),
                    expected,
                },
                other => other,
            })
        }
    }
}

fn decode_as<'b>(
    body: &'b [u8],
    enc: &'static encoding_rs::Encoding,
    expected: &'static str,
) -> Result<Cow<'b, str>, ImportError> {
    let mut decoder = enc.new_decoder_without_bom_handling();
    let capacity = decoder
        .max_utf8_buffer_length_without_replacement(body.len())
        .unwrap_or(body.len().saturating_mul(3));
    let mut out = String::with_capacity(capacity);
    let (result, read) = decoder.decode_to_string_without_replacement(body, &mut out, true);
    match result {
        encoding_rs::DecoderResult::InputEmpty => Ok(Cow::Owned(out)),
        // (OutputFull cannot happen: `out` has the decoder's own worst-case capacity.)
        // Malformed: the bad sequence ends just before `read`.
        _ => Err(encoding_error(body, read.saturating_sub(1), expected)),
    }
}

fn encoding_error(body: &[u8], at: usize, expected: &'static str) -> ImportError {
    let before = body.get(..at).unwrap_or(body);
    ImportError::Encoding {
        line: before.iter().filter(|&&b| b == b'\n').count() + 1,
        expected,
    }
}

fn read_csv(text: &str) -> Result<Table, ImportError> {
    // Excel's "Unicode text" is tab-separated; a header line with tabs and no comma is that.
    let first_line = text.lines().next().unwrap_or("");
    let delimiter = if first_line.contains('\t') && !first_line.contains(',') {
        b'\t'
    } else {
        b','
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let mut builder = Builder::default();
    // The cells' text is at most the file's; reserving it spares the buffer's regrowth copies.
    builder.table.text.reserve(text.len());
    let mut record = csv::StringRecord::new();
    let mut at = 0;
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {
                builder.row(at, record.iter(), &[])?;
                at += 1;
            }
            Ok(false) => break,
            Err(e) => return Err(ImportError::Csv(shown_all(&e.to_string()))),
        }
    }
    builder.finish()
}

fn read_xlsx(body: &[u8]) -> Result<Table, ImportError> {
    // calamine is third-party code parsing untrusted bytes; should it ever panic on a
    // malformed workbook, that is an unreadable file, not a crashed request.
    std::panic::catch_unwind(|| read_xlsx_cells(body)).unwrap_or_else(|_| {
        Err(ImportError::Xlsx(
            "the workbook's structure is damaged".into(),
        ))
    })
}

fn xlsx_error(e: calamine::XlsxError) -> ImportError {
    ImportError::Xlsx(shown_all(&e.to_string()))
}

fn read_xlsx_cells(body: &[u8]) -> Result<Table, ImportError> {
    use calamine::{Reader, SheetType, Xlsx};
    let mut workbook: Xlsx<_> = Xlsx::new(Cursor::new(body)).map_err(xlsx_error)?;
    let sheet = workbook
        .sheets_metadata()
        .iter()
        .find(|s| s.typ == SheetType::WorkSheet)
        .map(|s| s.name.clone())
        .ok_or_else(|| ImportError::Xlsx("the workbook has no worksheet".into()))?;
    // Cells are streamed, not read as a calamine Range: a Range is as big as the sheet's
    // bounding box, and one stray cell at XFD1048576 would ask for billions of cells.
    let mut reader = workbook
        .worksheet_cells_reader(&sheet)
        .map_err(xlsx_error)?;
    // Rows go to the table as they stream in, so memory is the table's, not a cell list's.
    // Every writer (Excel, WPS, LibreOffice) writes rows in ascending order; cells within a
    // row are sorted here all the same.
    let mut builder = Builder::default();
    let mut current: Option<u32> = None;
    let mut cells: Vec<(usize, String, bool)> = Vec::with_capacity(COLUMNS.len());
    while let Some(cell) = reader.next_cell().map_err(xlsx_error)? {
        let (row, col) = cell.get_position();
        let (text, rounded) = xlsx_text(cell.get_value());
        if text.is_empty() {
            continue;
        }
        if col as usize >= MAX_COLUMNS || cells.len() >= MAX_COLUMNS {
            return Err(ImportError::TooManyColumns);
        }
        match current {
            Some(r) if r == row => {}
            Some(r) if row < r => {
                return Err(ImportError::Xlsx(
                    "the worksheet's rows are out of order".into(),
                ));
            }
            previous => {
                if let Some(r) = previous {
                    xlsx_row(&mut builder, r, &mut cells)?;
                }
                current = Some(row);
            }
        }
        cells.push((col as usize, text, rounded));
    }
    if let Some(r) = current {
        xlsx_row(&mut builder, r, &mut cells)?;
    }
    builder.finish()
}

/// Hands the non-empty `cells` of sheet row `row` to `builder` as a dense row, and empties
/// `cells` for the next.
fn xlsx_row(
    builder: &mut Builder,
    row: u32,
    cells: &mut Vec<(usize, String, bool)>,
) -> Result<(), ImportError> {
    cells.sort_by_key(|c| c.0);
    let width = cells.last().map_or(0, |c| c.0 + 1);
    let mut dense = vec![""; width];
    let mut rounded = Vec::new();
    for (col, text, was_rounded) in cells.iter() {
        dense[*col] = text;
        if *was_rounded {
            rounded.push(*col);
        }
    }
    builder.row(row as usize, dense.into_iter(), &rounded)?;
    cells.clear();
    Ok(())
}

/// The text a person sees in an `.xlsx` cell, and whether it is a number of 16 or more digits
/// (which the spreadsheet has already rounded to 15 significant digits).
fn xlsx_text(value: &calamine::DataRef<'_>) -> (String, bool) {
    use calamine::DataRef;
    match value {
        DataRef::String(s) => (s.trim().to_owned(), false),
        DataRef::SharedString(s) => (s.trim().to_owned(), false),
        DataRef::Int(i) => (i.to_string(), false),
        DataRef::Float(f) => number_text(*f),
        DataRef::Bool(b) => ((if *b { "TRUE" } else { "FALSE" }).to_owned(), false),
        DataRef::DateTime(dt) if dt.is_datetime() => {
            let (y, m, d, h, min, s, ms) = dt.to_ymd_hms_milli();
            if (h, min, s, ms) == (0, 0, 0, 0) {
                (format!("{y:04}/{m:02}/{d:02}"), false)
            } else {
                (
                    format!("{y:04}/{m:02}/{d:02} {h:02}:{min:02}:{s:02}"),
                    false,
                )
            }
        }
        DataRef::DateTime(dt) => number_text(dt.as_f64()),
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => (s.trim().to_owned(), false),
        DataRef::Error(e) => (e.to_string(), false),
        DataRef::Empty => (String::new(), false),
    }
}

/// A number as a spreadsheet shows it in a "General" cell, without exponent: whole numbers
/// as integers (an ID or phone typed as a number), others to 15 significant digits (Excel's
/// precision), so `0.1 + 0.2` reads `0.3`.
fn number_text(f: f64) -> (String, bool) {
    if !f.is_finite() {
        return (f.to_string(), false);
    }
    if f.fract() == 0.0 {
        // Excel keeps 15 significant digits: from 1e15 on, the last digits are already gone.
        let rounded = f.abs() >= 1e15;
        return (format!("{f:.0}"), rounded);
    }
    let fifteen: f64 = format!("{f:.14e}").parse().unwrap_or(f);
    (format!("{fifteen}"), false)
}

/// Builds a [`Table`] row by row, finding the header row on the way.
#[derive(Default)]
struct Builder {
    table: Table,
    /// Position in the file of the header row, once found.
    header_at: Option<usize>,
    /// Title rows skipped before the header.
    titles: usize,
    /// Whether each file column has a header.
    named: Vec<bool>,
}

/// Title rows (one cell, no template name) skipped before the header at most.
const MAX_TITLE_ROWS: usize = 5;

impl Builder {
    /// Takes the row at 0-based position `at` in the file; `rounded` lists its columns holding
    /// numbers already rounded by the spreadsheet.
    fn row<'a>(
        &mut self,
        at: usize,
        cells: impl Iterator<Item = &'a str> + Clone,
        rounded: &[usize],
    ) -> Result<(), ImportError> {
        if cells.clone().all(|c| c.trim().is_empty()) {
            return Ok(());
        }
        let Some(header_at) = self.header_at else {
            return self.header(at, cells);
        };
        let number = at - header_at;
        let index = self.table.rows.len();
        if index >= MAX_ROWS {
            return Err(ImportError::TooManyRows);
        }
        self.table.rows.push((number, self.table.ends.len()));
        let mut width = 0;
        for (col, cell) in cells.enumerate() {
            let cell = cell.trim();
            if !cell.is_empty() && !self.named.get(col).copied().unwrap_or(false) {
                return Err(ImportError::DataWithoutHeader {
                    row: number,
                    column: col + 1,
                    letters: column_letters(col),
                });
            }
            if col < self.named.len() {
                self.table.text.push_str(cell);
                self.table.ends.push(self.table.text.len());
                width += 1;
            }
        }
        // Short rows (a CSV line that stops early) read as empty cells.
        for _ in width..self.named.len() {
            self.table.ends.push(self.table.text.len());
        }
        self.table
            .rounded
            .extend(rounded.iter().map(|&c| (index, c)));
        Ok(())
    }

    fn header<'a>(
        &mut self,
        at: usize,
        cells: impl Iterator<Item = &'a str>,
    ) -> Result<(), ImportError> {
        let keys: Vec<String> = COLUMNS.iter().map(|h| header_key(h)).collect();
        let mut headers: Vec<String> = cells
            .take(MAX_COLUMNS * 64)
            .map(|c| c.trim().to_owned())
            .collect();
        // Spreadsheets export formatted but empty columns as trailing empty cells.
        while headers.last().is_some_and(String::is_empty) {
            headers.pop();
        }
        if headers.len() > MAX_COLUMNS {
            return Err(ImportError::TooManyColumns);
        }
        let mut slots = [None; COLUMNS.len()];
        let mut unknown = Vec::new();
        for (i, h) in headers.iter().enumerate() {
            if h.is_empty() {
                continue;
            }
            let key = header_key(h);
            match keys.iter().position(|k| *k == key) {
                Some(c) if slots[c].is_some() => {
                    return Err(ImportError::DuplicateColumn(COLUMNS[c].to_owned()));
                }
                Some(c) => slots[c] = Some(i),
                None => unknown.push(shown(h)),
            }
        }
        if slots.iter().all(Option::is_none) {
            let filled = headers.iter().filter(|h| !h.is_empty()).count();
            if filled <= 1 && self.titles < MAX_TITLE_ROWS {
                self.titles += 1;
                return Ok(());
            }
            return Err(ImportError::NoHeader);
        }
        let missing: Vec<String> = COLUMNS
            .iter()
            .zip(&slots)
            .filter(|(h, s)| h.ends_with('*') && s.is_none())
            .map(|(h, _)| (*h).to_owned())
            .collect();
        if !missing.is_empty() || !unknown.is_empty() {
            return Err(ImportError::Columns { missing, unknown });
        }
        self.named = headers.iter().map(|h| !h.is_empty()).collect();
        self.table.headers = headers;
        self.table.slots = slots;
        self.header_at = Some(at);
        Ok(())
    }

    fn finish(self) -> Result<Table, ImportError> {
        if self.header_at.is_none() {
            return Err(ImportError::NoHeader);
        }
        Ok(self.table)
    }
}

/// A header as compared: no whitespace, no `*`, half-width parentheses and slash.
fn header_key(h: &str) -> String {
    let key: String = h
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '（' => '(',
            '）' => ')',
            '＊' => '*',
            '／' => '/',
            c => c,
        })
        .collect();
    key.trim_matches('*').to_owned()
}

/// `A`, `Z`, `AA`, … for 0-based column `col`.
fn column_letters(mut col: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'A' + (col % 26) as u8);
        if col < 26 {
            break;
        }
        col = col / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The sound rows and the rejections of a [`Table`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Checked {
    /// Rows with no problem, in file order.
    pub rows: Vec<ImportRow>,
    /// Every problem found, by row, then in column order; a row with any is not in `rows`.
    pub rejected: Vec<Rejection>,
}

/// A sound row of the template.
#[derive(Debug, Clone, Serialize)]
pub struct ImportRow {
    /// 1-based data row number (the first row under the header is 1).
    pub row: usize,
    /// 姓名: the resident's name, kept beside the card as residents are.
    pub name: String,
    /// Everything else the row says.
    pub card: Card,
}

/// One problem in one cell of the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Rejection {
    /// 1-based data row number (the first row under the header is 1).
    pub row: usize,
    /// The published header of the column, e.g. `身份证号*`.
    pub column: String,
    /// What is wrong, in English, without the full ID-card or phone number.
    pub reason: String,
}

/// Checks every row of `table` against the template's rules and the card's, `today` bounding
/// dates (nobody is born in the future). A row appears either in `rows` or, with one
/// [`Rejection`] per bad column, in `rejected`. A repeated ID-card number is rejected on every
/// occurrence after the first (Yunnan's rule: one person, one record).
pub fn validate(table: &Table, today: NaiveDate) -> Checked {
    let mut out = Checked {
        rows: Vec::with_capacity(table.len()),
        rejected: Vec::new(),
    };
    let mut first_row_of: HashMap<u64, usize> = HashMap::with_capacity(table.len());
    for index in 0..table.len() {
        let mut check = RowCheck {
            table,
            index,
            problems: Vec::new(),
        };
        let number = table.row_number(index).unwrap_or(index + 1);
        let (name, card) = check.card(today);
        if let Some(key) = card.id_number.as_deref().and_then(id_key) {
            match first_row_of.get(&key) {
                Some(first) => {
                    check.reject(Col::IdNumber, format!("same ID number as row {first}"))
                }
                None => {
                    first_row_of.insert(key, number);
                }
            }
        }
        if check.problems.is_empty() {
            // Safety net: the card's own rules, should this module ever check less than they do.
            for p in card.problems(today) {
                check.reject(column_of_problem(&p), shown_all(&p));
            }
        }
        if check.problems.is_empty() {
            out.rows.push(ImportRow {
                row: number,
                name,
                card,
            });
        } else {
            check.problems.sort_by_key(|p| p.0 as usize);
            out.rejected
                .extend(check.problems.into_iter().map(|(col, reason)| Rejection {
                    row: number,
                    column: col.header().to_owned(),
                    reason,
                }));
        }
    }
    out
}

/// An ID number's identity for duplicate detection, without keeping a string per row: the 17
/// digits and the check value (0–10).
fn id_key(id: &str) -> Option<u64> {
    let b = id.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = b[..17]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let check = match b[17] {
        d @ b'0'..=b'9' => u64::from(d - b'0'),
        b'X' => 10,
        _ => return None,
    };
    Some(digits * 11 + check)
}

/// The column a problem of [`Card::problems`] is about, from the field name it starts with.
fn column_of_problem(p: &str) -> Col {
    let field = p.split([':', '.', '[', ' ']).next().unwrap_or("");
    let contact = |name: Col, phone: Col| if p.contains(".phone") { phone } else { name };
    match field {
        "id_number" => Col::IdNumber,
        "gender" => Col::Gender,
        "birth_date" => Col::BirthDate,
        "work_start_year" => Col::WorkStart,
        "retirement_year" => Col::Retirement,
        "phones" => Col::Mobile,
        "contacts" if p.starts_with("contacts[1]") => contact(Col::C2Name, Col::C2Phone),
        "contacts" if p.starts_with("contacts[2]") => contact(Col::C3Name, Col::C3Phone),
        "contacts" => contact(Col::C1Name, Col::C1Phone),
        "relative" => contact(Col::RelativeName, Col::RelativePhone),
        "neighbour" => contact(Col::NeighbourName, Col::NeighbourPhone),
        "volunteer" => contact(Col::VolunteerName, Col::VolunteerPhone),
        "user_type" => Col::UserType,
        "religion" => Col::Religion,
        "political_status" => Col::Political,
        "living_situation" => Col::Living,
        "marital_status" => Col::Marital,
        "physical_condition" => Col::Physical,
        "education" => Col::Education,
        "blood_type" => Col::BloodType,
        "languages" => Col::Languages,
        "income" => Col::Income,
        "medical_history" => Col::MedicalHistory,
        "services_wanted" => Col::Services,
        "household_address" => Col::HDetail,
        "residence_address" => Col::RDetail,
        "ethnicity" => Col::Ethnicity,
        "former_employer" => Col::FormerEmployer,
        _ => Col::Name,
    }
}

/// The checks of one data row, collecting its problems.
struct RowCheck<'t> {
    table: &'t Table,
    index: usize,
    problems: Vec<(Col, String)>,
}

impl<'t> RowCheck<'t> {
    fn raw(&self, col: Col) -> &'t str {
        self.table.value(self.index, col)
    }

    /// Records a problem; a second one in the same column joins the first.
    fn reject(&mut self, col: Col, reason: String) {
        if let Some((_, r)) = self.problems.iter_mut().find(|(c, _)| *c == col) {
            r.push_str("; ");
            r.push_str(&reason);
        } else {
            self.problems.push((col, reason));
        }
    }

    /// The cell's text, `None` when empty (a rejection when the column is required).
    fn present(&mut self, col: Col) -> Option<&'t str> {
        let v = self.raw(col);
        if v.is_empty() {
            if col.required() {
                self.reject(col, format!("{} is required", col.label()));
            }
            return None;
        }
        Some(v)
    }

    /// Free text of at most `max` characters.
    fn text(&mut self, col: Col, max: usize) -> Option<String> {
        let v = self.present(col)?;
        let n = v.chars().count();
        if n > max {
            self.reject(
                col,
                format!("is {n} characters long; at most {max} are accepted"),
            );
            return None;
        }
        Some(v.to_owned())
    }

    /// A single-choice template code, as the card's word.
    fn code(&mut self, col: Col, table: &[&'static str]) -> Option<String> {
        let v = self.present(col)?;
        let v = halfwidth(v);
        match code_word(&v, table) {
            Some(w) => Some(w.to_owned()),
            None => {
                self.reject(col, not_a_code(&v, col, table));
                None
            }
        }
    }

    /// A multi-choice template field, as the card's words, each once, in the order written.
    fn codes(&mut self, col: Col, table: &[&'static str]) -> Vec<String> {
        let Some(v) = self.present(col) else {
            return Vec::new();
        };
        let v = halfwidth(v);
        let mut words = Vec::new();
        let mut bad = Vec::new();
        for part in v
            .split(|c: char| matches!(c, '、' | ',' | ';') || c.is_whitespace())
            .filter(|p| !p.is_empty())
        {
            match code_word(part, table) {
                Some(w) if !words.iter().any(|x: &String| x == w) => words.push(w.to_owned()),
                Some(_) => {}
                None => bad.push(part),
            }
        }
        for part in bad {
            self.reject(col, not_a_code(part, col, table));
        }
        if words.is_empty() && col.required() && !self.problems.iter().any(|p| p.0 == col) {
            self.reject(col, format!("{} is required", col.label()));
        }
        words
    }

    fn yes_no(&mut self, col: Col) -> Option<bool> {
        let v = self.present(col)?;
        let v = halfwidth(v);
        match v.to_ascii_lowercase().as_str() {
            "是" | "y" | "yes" | "1" | "true" => Some(true),
            "否" | "n" | "no" | "0" | "false" => Some(false),
            _ => {
                self.reject(col, format!("{} is not 是 or 否", shown(&v)));
                None
            }
        }
    }

    /// A year (`1980`, `1980年`, or a date whose year is taken), plausible in a life born on
    /// `birth` (`card::year_problem`: not before 1920 or working age, not in the future).
    fn year(&mut self, col: Col, birth: Option<NaiveDate>, today: NaiveDate) -> Option<i32> {
        let v = self.present(col)?;
        let v = halfwidth(v);
        let digits = v.strip_suffix('年').unwrap_or(&v);
        let year = if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            parse_date(&v).map(|d| d.year())
        };
        let Some(year) = year else {
            self.reject(
                col,
                format!("{} is not a year (write it like 1980)", shown(&v)),
            );
            return None;
        };
        if let Some(p) = year_problem(year, birth, today) {
            self.reject(col, p);
            return None;
        }
        Some(year)
    }

    /// One phone number, as written (full-width digits made half-width).
    fn phone(&mut self, col: Col) -> Option<String> {
        let v = self.present(col)?;
        if self.table.was_rounded(self.index, col) {
            self.reject(col, ROUNDED.to_owned());
            return None;
        }
        let v = halfwidth(v);
        if !valid_phone(&v) {
            self.reject(col, NOT_A_PHONE.to_owned());
            return None;
        }
        Some(v.into_owned())
    }

    /// The resident's numbers: one or more, separated like a multi-choice field.
    fn phones(&mut self, col: Col) -> Vec<String> {
        let Some(v) = self.present(col) else {
            return Vec::new();
        };
        if self.table.was_rounded(self.index, col) {
            self.reject(col, ROUNDED.to_owned());
            return Vec::new();
        }
        let v = halfwidth(v);
        let parts: Vec<&str> = v
            .split(['、', ',', ';', '/'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let mut out = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            if valid_phone(p) {
                out.push((*p).to_owned());
            } else if parts.len() == 1 {
                self.reject(col, NOT_A_PHONE.to_owned());
            } else {
                self.reject(
                    col,
                    format!("number {} of {}: {NOT_A_PHONE}", i + 1, parts.len()),
                );
            }
        }
        out
    }

    /// A person to call; `None` when all their cells are empty. A person without a name but
    /// with a number (or relation, address) is a rejection on the name column: a number
    /// nobody can be asked for by name is no use to a call-centre operator.
    fn contact(
        &mut self,
        name: Col,
        relation: Option<Col>,
        phone: Col,
        address: Option<Col>,
    ) -> Option<Contact> {
        let others = [relation, Some(phone), address];
        let has_other = others.iter().flatten().any(|c| !self.raw(*c).is_empty());
        let n = self.text(name, MAX_NAME);
        if n.is_none() && self.raw(name).is_empty() {
            if has_other {
                self.reject(
                    name,
                    format!(
                        "{} is empty, but the row has this person's other details",
                        name.label()
                    ),
                );
            } else {
                return None;
            }
        }
        let contact = Contact {
            name: n.unwrap_or_default(),
            relation: relation.and_then(|c| self.text(c, MAX_TEXT)),
            phone: self.phone(phone),
            address: address.and_then(|c| self.text(c, MAX_TEXT)),
        };
        Some(contact)
    }

    fn address(&mut self, cols: [Col; 7]) -> Option<Address> {
        let [
            province,
            city,
            district,
            street,
            detail,
            committee,
            committee_phone,
        ] = cols;
        let a = Address {
            province: self.text(province, MAX_TEXT),
            city: self.text(city, MAX_TEXT),
            district: self.text(district, MAX_TEXT),
            street: self.text(street, MAX_TEXT),
            detail: self.text(detail, MAX_TEXT),
            committee: self.text(committee, MAX_TEXT),
            committee_phone: self.phone(committee_phone),
            lat: None,
            lon: None,
        };
        (a != Address::default()).then_some(a)
    }

    /// The ID number, upper-case `X`, checked by itself (GB 11643-1999: shape, check character
    /// §8.2, birth date digits 7–14).
    fn id_number(&mut self) -> Option<String> {
        let v = self.present(Col::IdNumber)?;
        if self.table.was_rounded(self.index, Col::IdNumber) {
            self.reject(Col::IdNumber, ROUNDED.to_owned());
            return None;
        }
        // A leading `'` is how people force a spreadsheet cell to text; it may survive in a CSV.
        let v = v.strip_prefix('\'').unwrap_or(v);
        let id = halfwidth(v).replace('x', "X");
        // `card::id_number_problem` slices by byte: only hand it ASCII.
        if !id.is_ascii() || id.len() != 18 {
            let reason = if id.len() == 15 && id.bytes().all(|b| b.is_ascii_digit()) {
                "a 15-digit first-generation ID number; give the 18-digit number (GB 11643-1999)"
                    .to_owned()
            } else {
                format!(
                    "an ID-card number is 17 digits and a check digit or X; this one has {} characters",
                    id.chars().count()
                )
            };
            self.reject(Col::IdNumber, reason);
            return None;
        }
        if let Some(p) = id_number_problem(&id) {
            let shape_ok = id_key(&id).is_some();
            self.reject(Col::IdNumber, p);
            // Past a wrong check character, the date and gender digits still say something
            // (the template's own example row is wrong in both); past a wrong shape, nothing.
            if !shape_ok {
                return None;
            }
            if id_check_char(&id[..17]).is_some_and(|c| c as u8 != id.as_bytes()[17])
                && id_birth_date(&id).is_none()
            {
                self.reject(
                    Col::IdNumber,
                    format!("digits 7–14 ({}) are not a date", &id[6..14]),
                );
            }
        }
        Some(id)
    }

    /// The card of the row, and the name; problems go to `self.problems`.
    fn card(&mut self, today: NaiveDate) -> (String, Card) {
        let name = self.text(Col::Name, MAX_NAME).unwrap_or_default();
        let id = self.id_number();

        let gender = self
            .present(Col::Gender)
            .and_then(|v| match halfwidth(v).as_ref() {
                "男" | "1" => Some(Gender::Male),
                "女" | "2" => Some(Gender::Female),
                other => {
                    let reason = format!("{} is not 男 or 女", shown(other));
                    self.reject(Col::Gender, reason);
                    None
                }
            });
        let id_shape_ok = id.as_deref().and_then(id_key).is_some();
        if let (Some(g), Some(id)) = (gender, id.as_deref())
            && id_shape_ok
            && let Some(id_g) = id_gender(id)
            && g != id_g
        {
            let digit = char::from(id.as_bytes()[16]);
            let (parity, who) = match id_g {
                Gender::Male => ("odd", "a man"),
                Gender::Female => ("even", "a woman"),
            };
            let said = if g == Gender::Male { "男" } else { "女" };
            self.reject(
                Col::Gender,
                format!("digit 17 ({digit}) of the ID number is {parity}, which is {who}; 性别 says {said}"),
            );
        }

        let id_birth = id
            .as_deref()
            .filter(|_| id_shape_ok)
            .and_then(id_birth_date);
        let birth_date = match self.present(Col::BirthDate) {
            Some(v) => match parse_date(&halfwidth(v)) {
                Some(d) => {
                    if let Some(idb) = id_birth
                        && idb != d
                    {
                        self.reject(
                            Col::BirthDate,
                            format!(
                                "{} disagrees with the ID number's digits 7–14 ({})",
                                d.format("%Y/%m/%d"),
                                idb.format("%Y/%m/%d")
                            ),
                        );
                    }
                    Some((d, Col::BirthDate))
                }
                None => {
                    let reason = format!(
                        "{} is not a date (write it like 1960/12/23)",
                        shown(&halfwidth(v))
                    );
                    self.reject(Col::BirthDate, reason);
                    None
                }
            },
            None => id_birth.map(|d| (d, Col::IdNumber)),
        };
        let birth_date = birth_date.and_then(|(d, col)| {
            let what = if col == Col::IdNumber {
                "the birth date in the ID number"
            } else {
                "the birth date"
            };
            if d > today {
                self.reject(
                    col,
                    format!("{what} {} is in the future", d.format("%Y/%m/%d")),
                );
                None
            } else if d < MIN_BIRTH_DATE {
                self.reject(
                    col,
                    format!("{what} {} is before 1900", d.format("%Y/%m/%d")),
                );
                None
            } else {
                Some(d)
            }
        });

        let ethnicity = self.text(Col::Ethnicity, MAX_ETHNICITY);
        if let Some(e) = &ethnicity
            && e.chars()
                .all(|c| c.is_ascii_digit() || ('０'..='９').contains(&c))
        {
            self.reject(
                Col::Ethnicity,
                "write the ethnicity as text (e.g. 汉), not as a code".to_owned(),
            );
        }
        let phones = self.phones(Col::Mobile);
        let languages = self.codes(Col::Languages, codes::LANGUAGE);
        let user_type = self.code(Col::UserType, codes::USER_TYPE);
        let household_address = self.address([
            Col::HProvince,
            Col::HCity,
            Col::HDistrict,
            Col::HStreet,
            Col::HDetail,
            Col::HCommittee,
            Col::HCommitteePhone,
        ]);
        let residence_address = self.address([
            Col::RProvince,
            Col::RCity,
            Col::RDistrict,
            Col::RStreet,
            Col::RDetail,
            Col::RCommittee,
            Col::RCommitteePhone,
        ]);
        let religion = self.code(Col::Religion, codes::RELIGION);
        let political_status = self.code(Col::Political, codes::POLITICAL_STATUS);
        let living_situation = self.code(Col::Living, codes::LIVING_SITUATION);
        let marital_status = self.code(Col::Marital, codes::MARITAL_STATUS);
        let physical_condition = self.code(Col::Physical, codes::PHYSICAL_CONDITION);
        let education = self.code(Col::Education, codes::EDUCATION);
        let income = self.codes(Col::Income, codes::INCOME);
        let work_start_year = self.year(Col::WorkStart, birth_date, today);
        let retirement_year = self.year(Col::Retirement, birth_date, today);
        if let (Some(w), Some(r)) = (work_start_year, retirement_year)
            && r < w
        {
            self.reject(
                Col::Retirement,
                format!("{r} is before 参加工作时间(年) {w}"),
            );
        }
        let former_employer = self.text(Col::FormerEmployer, MAX_TEXT);
        let old_age_allowance = self.yes_no(Col::Allowance);
        let blood_type = self.present(Col::BloodType).and_then(|v| {
            let v = halfwidth(v).to_ascii_uppercase();
            let word = match v.as_str() {
                "A" | "B" | "AB" | "O" => codes::BLOOD_TYPE.iter().find(|w| **w == v).copied(),
                _ => code_word(&v, codes::BLOOD_TYPE),
            };
            if word.is_none() {
                self.reject(
                    Col::BloodType,
                    not_a_code(&v, Col::BloodType, codes::BLOOD_TYPE),
                );
            }
            word.map(str::to_owned)
        });
        let medical_history = self.codes(Col::MedicalHistory, codes::MEDICAL_HISTORY);
        let contacts: Vec<Contact> = [
            (Col::C1Name, Col::C1Relation, Col::C1Phone, Col::C1Address),
            (Col::C2Name, Col::C2Relation, Col::C2Phone, Col::C2Address),
            (Col::C3Name, Col::C3Relation, Col::C3Phone, Col::C3Address),
        ]
        .into_iter()
        .filter_map(|(n, r, p, a)| self.contact(n, Some(r), p, Some(a)))
        .collect();
        let relative = self.contact(
            Col::RelativeName,
            Some(Col::RelativeRelation),
            Col::RelativePhone,
            None,
        );
        let neighbour = self.contact(Col::NeighbourName, None, Col::NeighbourPhone, None);
        let volunteer = self.contact(Col::VolunteerName, None, Col::VolunteerPhone, None);
        let services_wanted = self.codes(Col::Services, codes::SERVICES);
        let needs_phone = self.yes_no(Col::NeedsPhone);

        let card = Card {
            id_number: id,
            gender,
            birth_date,
            ethnicity,
            phones,
            languages,
            user_type,
            household_address,
            residence_address,
            religion,
            political_status,
            living_situation,
            marital_status,
            physical_condition,
            education,
            income,
            work_start_year,
            retirement_year,
            former_employer,
            old_age_allowance,
            blood_type,
            medical_history,
            medical_notes: None,
            contacts,
            relative,
            neighbour,
            volunteer,
            key_safe: None,
            services_wanted,
            needs_phone,
        };
        (name, card)
    }
}

const NOT_A_PHONE: &str =
    "not a phone number (digits, with +, - or spaces between; 3 to 20 digits)";

const ROUNDED: &str = "the spreadsheet stored this as a number and kept only its first 15 digits; \
     format the column as text and type the number again";

/// The card's word for template code `v` (1-based digits) of `table`.
fn code_word(v: &str, table: &[&'static str]) -> Option<&'static str> {
    if v.is_empty() || v.len() > 3 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    codes::word(table, v.parse().ok()?)
}

/// `7 is not a code of 婚姻状况 (1 unmarried, 2 married, 3 widowed, 4 divorced)`; long lists
/// shortened to their ends.
fn not_a_code(v: &str, col: Col, table: &[&str]) -> String {
    let word = |i: usize| format!("{} {}", i + 1, table[i].replace('_', " "));
    let list = if table.len() <= 6 {
        (0..table.len()).map(word).collect::<Vec<_>>().join(", ")
    } else {
        format!("{} … {}", word(0), word(table.len() - 1))
    };
    format!("{} is not a code of {} ({list})", shown(v), col.label())
}

/// A date as the template writes it (`1960/12/23`) or as people do (`1960-12-23`,
/// `1960.12.23`, `19601223`, `1960年12月23日`, single-digit month and day).
fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    let (y, m, d) = if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        (s.get(..4)?, s.get(4..6)?, s.get(6..)?)
    } else {
        let s = s.strip_suffix('日').unwrap_or(s);
        let mut parts = s.split(['/', '-', '.', '年', '月']);
        let ymd = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        ymd
    };
    let digits = |p: &str, lens: std::ops::RangeInclusive<usize>| {
        (lens.contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    };
    let year = i32::try_from(digits(y, 4..=4)?).ok()?;
    NaiveDate::from_ymd_opt(year, digits(m, 1..=2)?, digits(d, 1..=2)?)
}

/// Full-width ASCII (`４`, `／`, `Ｘ`) and the ideographic space made half-width; borrowed when
/// there is none, which is nearly always.
fn halfwidth(s: &str) -> Cow<'_, str> {
    if s.is_ascii()
        || !s
            .chars()
            .any(|c| ('\u{FF01}'..='\u{FF5E}').contains(&c) || c == '\u{3000}')
    {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
                '\u{3000}' => ' ',
                c => c,
            })
            .collect(),
    )
}

/// A cell value as a reason may quote it: at most 20 characters, and every run of seven or
/// more digits (an ID or phone number in the wrong column) masked but for its first and last
/// two digits.
pub fn shown(v: &str) -> String {
    let clipped: String = v.chars().take(20).collect();
    let mut out = mask_digit_runs(&clipped);
    if v.chars().count() > 20 {
        out.push('…');
    }
    out
}

/// [`shown`]'s masking without the clipping, for whole messages from parsers.
fn shown_all(v: &str) -> String {
    mask_digit_runs(v)
}

fn mask_digit_runs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let n = run.chars().count();
        if n >= 7 {
            for (i, c) in run.chars().enumerate() {
                out.push(if i < 2 || i >= n - 2 { c } else { '*' });
            }
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        // An ID's check character X ends its run of digits.
        if c.is_ascii_digit()
            || ('０'..='９').contains(&c)
            || ((c == 'X' || c == 'x') && !run.is_empty())
        {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::card::id_check_char;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 7).unwrap()
    }

    /// A valid ID number: area, birth date `YYYYMMDD`, three-digit sequence (its last digit
    /// odd for a man), and the GB 11643 check character.
    fn id(area: &str, birth: &str, seq: &str) -> String {
        let first17 = format!("{area}{birth}{seq}");
        format!("{first17}{}", id_check_char(&first17).unwrap())
    }

    /// A row as header → value; every required column filled with a valid value.
    fn row(name: &str, id_number: &str, gender: &str, birth: &str) -> Vec<(&'static str, String)> {
        let mut r: Vec<(&'static str, String)> = vec![
            ("姓名*", name.into()),
            ("性别*", gender.into()),
            ("身份证号*", id_number.into()),
            ("出生日期", birth.into()),
            ("民族*", "汉".into()),
            ("联系手机*", "13812345678".into()),
            ("熟悉语言", "1、3".into()),
            ("户籍省份*", "广东省".into()),
            ("户籍地市*", "广州市".into()),
            ("户籍区(县)*", "天河区".into()),
            ("户籍街道*", "石牌街道".into()),
            ("户籍详细地址*", "天河路1号".into()),
            ("常住省份*", "广东省".into()),
            ("常住地市*", "广州市".into()),
            ("常住街道*", "石牌街道".into()),
            ("常住详细地址*", "天河路1号302".into()),
            ("居住情况*", "1".into()),
            ("婚姻状况*", "3".into()),
            ("身体状况*", "2".into()),
            ("文化程度*", "4".into()),
            ("经济来源*", "1,5".into()),
            ("参加工作时间(年)", "1980".into()),
            ("离退休时间(年)", "2020".into()),
            ("血型", "4".into()),
            ("病例(史)", "1、3".into()),
            ("第一紧急联系人姓名", "陈二".into()),
            ("第一紧急联系人关系", "儿子".into()),
            ("第一紧急联系人电话", "13900001111".into()),
            ("希望提供服务*", "1、4".into()),
            ("是否需要手机", "否".into()),
        ];
        r.retain(|(_, v)| !v.is_empty());
        r
    }

    fn set(r: &mut Vec<(&'static str, String)>, header: &'static str, value: &str) {
        r.retain(|(h, _)| *h != header);
        if !value.is_empty() {
            r.push((header, value.to_owned()));
        }
    }

    /// A CSV of `headers` and rows.
    fn csv_text(headers: &[&str], rows: &[Vec<(&'static str, String)>]) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(headers).unwrap();
        for r in rows {
            let cells = headers.iter().map(|h| {
                let key = header_key(h);
                r.iter()
                    .find(|(c, _)| header_key(c) == key)
                    .map_or("", |(_, v)| v.as_str())
            });
            w.write_record(cells).unwrap();
        }
        String::from_utf8(w.into_inner().unwrap()).unwrap()
    }

    fn check(body: &[u8]) -> Checked {
        validate(&read_table(body, None).unwrap(), today())
    }

    fn reasons_of(c: &Checked, row: usize) -> Vec<(String, String)> {
        c.rejected
            .iter()
            .filter(|r| r.row == row)
            .map(|r| (r.column.clone(), r.reason.clone()))
            .collect()
    }

    /// No run of 11 or more digits (a mobile or an ID number) in any reason.
    fn assert_no_numbers_in(c: &Checked) {
        for r in &c.rejected {
            let mut run = 0;
            for ch in r.reason.chars() {
                run = if ch.is_ascii_digit() { run + 1 } else { 0 };
                assert!(run < 11, "a number in a reason: {r:?}");
            }
        }
    }

    #[test]
    fn the_template_example_row_fails_its_check_character_and_gender_digit() {
        let r = row("陈一", "440111196012236789", "男", "1960/12/23");
        let c = check(csv_text(&COLUMNS, &[r]).as_bytes());
        assert!(c.rows.is_empty());
        let got = reasons_of(&c, 1);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "性别*");
        assert_eq!(
            got[0].1,
            "digit 17 (8) of the ID number is even, which is a woman; 性别 says 男"
        );
        assert_eq!(got[1].0, "身份证号*");
        let expected = id_check_char("44011119601223678").unwrap();
        assert_eq!(
            got[1].1,
            format!("check character 9 is wrong (GB 11643: {expected} for these 17 digits)")
        );
        assert_no_numbers_in(&c);
    }

    /// Good rows 1, 3, 5, 9; each other row wrong in one way.
    fn mixed_rows() -> Vec<Vec<(&'static str, String)>> {
        let good1 = id("440106", "19480315", "123");
        let good3 = id("440106", "19520704", "042");
        let mut rows = Vec::new();
        // 1: good, no 出生日期 (taken from the ID).
        rows.push(row("李明", &good1, "男", ""));
        // 2: wrong check character.
        let mut bad = id("440106", "19500101", "011");
        let last = if bad.ends_with('0') { "1" } else { "0" };
        bad.replace_range(17.., last);
        rows.push(row("王芳", &bad, "男", "1950/01/01"));
        // 3: good, woman, date written 1952-07-04.
        rows.push(row("张丽", &good3, "女", "1952-07-04"));
        // 4: 出生日期 disagrees with the ID.
        rows.push(row(
            "赵强",
            &id("440106", "19451111", "031"),
            "男",
            "1945.11.12",
        ));
        // 5: good, full-width digits in the phone, 离退休 empty.
        let mut r = row("钱多", &id("440103", "19400229", "051"), "男", "19400229");
        set(&mut r, "联系手机*", "１３８１２３４５６７８");
        set(&mut r, "离退休时间(年)", "");
        rows.push(r);
        // 6: 参加工作时间 1905 (zombie data).
        let mut r = row("孙七", &id("440106", "19550505", "071"), "男", "");
        set(&mut r, "参加工作时间(年)", "1905");
        rows.push(r);
        // 7: duplicate of row 1's ID.
        rows.push(row("李明", &good1, "男", ""));
        // 8: 婚姻状况 7, a code out of range.
        let mut r = row("周八", &id("440106", "19600606", "082"), "女", "");
        set(&mut r, "婚姻状况*", "7");
        rows.push(r);
        // 9: good, lower-case x check character when the ID has one, contacts 2 and 3.
        let mut r = row("吴九", &id("440106", "19620707", "093"), "男", "");
        set(&mut r, "第二紧急联系人姓名", "吴十");
        set(&mut r, "第二紧急联系人电话", "020-87654321");
        set(&mut r, "邻居姓名", "郑邻");
        set(&mut r, "邻居联系电话", "13700002222");
        rows.push(r);
        // 10: missing required 民族.
        let mut r = row("郑十", &id("440106", "19580808", "101"), "男", "");
        set(&mut r, "民族*", "");
        rows.push(r);
        // 11: a contact with a phone but no name; a bad multi-choice code.
        let mut r = row("冯一", &id("440106", "19500909", "111"), "男", "");
        set(&mut r, "第一紧急联系人姓名", "");
        set(&mut r, "病例(史)", "1、12");
        rows.push(r);
        rows
    }

    fn assert_mixed(c: &Checked) {
        let good: Vec<usize> = c.rows.iter().map(|r| r.row).collect();
        assert_eq!(good, vec![1, 3, 5, 9], "{:#?}", c.rejected);
        let one = |row: usize| {
            let got = reasons_of(c, row);
            assert_eq!(got.len(), 1, "row {row}: {got:?}");
            got.into_iter().next().unwrap()
        };
        let (col, reason) = one(2);
        assert_eq!(col, "身份证号*");
        assert!(reason.starts_with("check character "), "{reason}");
        let (col, reason) = one(4);
        assert_eq!(col, "出生日期");
        assert_eq!(
            reason,
            "1945/11/12 disagrees with the ID number's digits 7–14 (1945/11/11)"
        );
        let (col, reason) = one(6);
        assert_eq!(col, "参加工作时间(年)");
        assert_eq!(
            reason,
            "1905 is before the age of 14 for someone born in 1955"
        );
        assert_eq!(
            one(7),
            ("身份证号*".into(), "same ID number as row 1".into())
        );
        assert_eq!(
            one(8),
            (
                "婚姻状况*".into(),
                "7 is not a code of 婚姻状况 (1 unmarried, 2 married, 3 widowed, 4 divorced)"
                    .into()
            )
        );
        assert_eq!(one(10), ("民族*".into(), "民族 is required".into()));
        let got = reasons_of(c, 11);
        assert_eq!(
            got,
            vec![
                (
                    "病例(史)".into(),
                    "12 is not a code of 病例(史) (1 hypertension … 9 other)".into()
                ),
                (
                    "第一紧急联系人姓名".into(),
                    "第一紧急联系人姓名 is empty, but the row has this person's other details"
                        .into()
                ),
            ]
        );
        assert_no_numbers_in(c);

        let first = &c.rows[0];
        assert_eq!(first.name, "李明");
        let card = &first.card;
        assert_eq!(card.birth_date, NaiveDate::from_ymd_opt(1948, 3, 15));
        assert_eq!(card.gender, Some(Gender::Male));
        assert_eq!(card.phones, vec!["13812345678"]);
        assert_eq!(card.languages, vec!["mandarin", "cantonese"]);
        assert_eq!(card.income, vec!["pension", "low_income"]);
        assert_eq!(card.living_situation.as_deref(), Some("alone"));
        assert_eq!(card.marital_status.as_deref(), Some("widowed"));
        assert_eq!(card.education.as_deref(), Some("junior_middle"));
        assert_eq!(card.blood_type.as_deref(), Some("O"));
        assert_eq!(card.medical_history, vec!["hypertension", "diabetes"]);
        assert_eq!(card.services_wanted, vec!["basic", "meals"]);
        assert_eq!(card.work_start_year, Some(1980));
        assert_eq!(card.needs_phone, Some(false));
        assert_eq!(card.contacts.len(), 1);
        assert_eq!(card.contacts[0].relation.as_deref(), Some("儿子"));
        let home = card.residence_address.as_ref().unwrap();
        assert_eq!(home.detail.as_deref(), Some("天河路1号302"));
        assert_eq!(home.district, None);
        assert_eq!(
            card.household_address.as_ref().unwrap().district.as_deref(),
            Some("天河区")
        );
        assert_eq!(c.rows[2].card.phones, vec!["13812345678"]);
        let ninth = &c.rows[3].card;
        assert_eq!(ninth.contacts.len(), 2);
        assert_eq!(ninth.contacts[1].name, "吴十");
        assert_eq!(ninth.neighbour.as_ref().unwrap().name, "郑邻");
        for r in &c.rows {
            assert!(r.card.problems(today()).is_empty());
        }
    }

    #[test]
    fn good_and_bad_rows_are_told_apart_by_row_column_and_reason() {
        let text = csv_text(&COLUMNS, &mixed_rows());
        assert_mixed(&check(text.as_bytes()));
    }

    #[test]
    fn gb18030_and_a_utf8_bom_read_the_same() {
        let text = csv_text(&COLUMNS, &mixed_rows());
        let (gb, _, unmappable) = encoding_rs::GB18030.encode(&text);
        assert!(!unmappable);
        assert!(
            std::str::from_utf8(&gb).is_err(),
            "the fixture must not be UTF-8 by chance"
        );
        assert_mixed(&check(&gb));
        let declared = read_table(&gb, Some("text/csv; charset=GBK")).unwrap();
        assert_mixed(&validate(&declared, today()));
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(text.as_bytes());
        assert_mixed(&check(&bom));
        // Excel's "Unicode text": UTF-16LE with a BOM, tab-separated.
        let tsv = text.replace(',', "\t");
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(tsv.encode_utf16().flat_map(u16::to_le_bytes));
        assert_mixed(&check(&utf16));
    }

    #[test]
    fn undecodable_text_is_an_encoding_error_naming_the_line() {
        let mut body = "姓名*,性别*\n陈一,男\n".as_bytes().to_vec();
        body.extend_from_slice(b"\xFF\xFF,x\n");
        assert_eq!(
            read_table(&body, None).unwrap_err(),
            ImportError::Encoding {
                line: 3,
                expected: "UTF-8 or GB18030"
            }
        );
    }

    fn xlsx_fixture(id_as_number: bool) -> Vec<u8> {
        use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        let good = id("440106", "19480315", "123");
        let r = row("李明", &good, "男", "");
        // A different column order from the published one, to be sure headers are matched.
        let mut headers: Vec<&str> = COLUMNS.to_vec();
        headers.reverse();
        for (c, h) in headers.iter().enumerate() {
            ws.write_string(0, c as u16, *h).unwrap();
        }
        let date = Format::new().set_num_format("yyyy/m/d");
        for (c, h) in headers.iter().enumerate() {
            let c = c as u16;
            match *h {
                "联系手机*" => {
                    ws.write_number(1, c, 13812345678.0).unwrap();
                }
                "出生日期" => {
                    let d = ExcelDateTime::from_ymd(1948, 3, 15).unwrap();
                    ws.write_datetime_with_format(1, c, d, &date).unwrap();
                }
                "身份证号*" if id_as_number => {
                    ws.write_number(1, c, good.parse::<f64>().unwrap()).unwrap();
                }
                "参加工作时间(年)" => {
                    ws.write_number(1, c, 1980).unwrap();
                }
                _ => {
                    if let Some((_, v)) = r.iter().find(|(k, _)| k == h) {
                        ws.write_string(1, c, v.as_str()).unwrap();
                    }
                }
            }
        }
        wb.save_to_buffer().unwrap()
    }

    #[test]
    fn an_xlsx_reads_to_the_same_card_as_its_csv() {
        let good = id("440106", "19480315", "123");
        let mut r = row("李明", &good, "男", "1948/03/15");
        set(&mut r, "参加工作时间(年)", "1980");
        let from_csv = check(csv_text(&COLUMNS, &[r]).as_bytes());
        let body = xlsx_fixture(false);
        let table = read_table(&body, None).unwrap();
        assert_eq!(table.len(), 1);
        let phone_col = table
            .headers()
            .iter()
            .position(|h| h == "联系手机*")
            .unwrap();
        assert_eq!(table.cell(0, phone_col), "13812345678");
        let date_col = table
            .headers()
            .iter()
            .position(|h| h == "出生日期")
            .unwrap();
        assert_eq!(table.cell(0, date_col), "1948/03/15");
        let from_xlsx = validate(&table, today());
        assert!(from_xlsx.rejected.is_empty(), "{:?}", from_xlsx.rejected);
        assert_eq!(from_xlsx.rows[0].card, from_csv.rows[0].card);
        assert_eq!(from_xlsx.rows[0].name, "李明");
        // Declared by content type rather than sniffed: the same.
        let declared = read_table(&body, Some(XLSX_MIME)).unwrap();
        assert_eq!(
            validate(&declared, today()).rows[0].card,
            from_csv.rows[0].card
        );
    }

    #[test]
    fn an_id_typed_as_a_number_is_told_as_rounded() {
        let c = validate(&read_table(&xlsx_fixture(true), None).unwrap(), today());
        assert!(c.rows.is_empty());
        assert_eq!(c.rejected.len(), 1, "{:?}", c.rejected);
        assert_eq!(c.rejected[0].column, "身份证号*");
        assert!(
            c.rejected[0].reason.contains("15 digits"),
            "{:?}",
            c.rejected
        );
    }

    #[test]
    fn number_cells_read_as_people_see_them() {
        assert_eq!(number_text(13812345678.0), ("13812345678".into(), false));
        assert_eq!(number_text(1980.0), ("1980".into(), false));
        assert_eq!(number_text(0.1 + 0.2), ("0.3".into(), false));
        assert!(number_text(440111196012236789.0).1);
        assert!(!number_text(440111196012236789.0).0.contains('e'));
    }

    #[test]
    fn headers_in_any_order_with_or_without_star_and_full_width_parentheses() {
        let r = row("李明", &id("440106", "19480315", "123"), "男", "");
        let mut headers: Vec<String> = COLUMNS
            .iter()
            .map(|h| {
                h.trim_end_matches('*')
                    .replace('(', "（")
                    .replace(')', "）")
            })
            .collect();
        headers.rotate_left(7);
        headers[0] = format!("  {}  ", headers[0]);
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let c = check(csv_text(&headers, &[r]).as_bytes());
        assert_eq!(c.rows.len(), 1, "{:?}", c.rejected);
        assert_eq!(
            c.rows[0]
                .card
                .household_address
                .as_ref()
                .unwrap()
                .district
                .as_deref(),
            Some("天河区")
        );
    }

    #[test]
    fn header_errors_name_the_columns() {
        let r = row("李明", &id("440106", "19480315", "123"), "男", "");
        let without: Vec<&str> = COLUMNS
            .iter()
            .copied()
            .filter(|h| *h != "身份证号*")
            .collect();
        assert_eq!(
            read_table(
                csv_text(&without, std::slice::from_ref(&r)).as_bytes(),
                None
            )
            .unwrap_err(),
            ImportError::Columns {
                missing: vec!["身份证号*".into()],
                unknown: vec![]
            }
        );
        let mut typo: Vec<&str> = COLUMNS.to_vec();
        typo[1] = "姓别*";
        typo.push("备注");
        let e = read_table(csv_text(&typo, std::slice::from_ref(&r)).as_bytes(), None).unwrap_err();
        assert_eq!(
            e,
            ImportError::Columns {
                missing: vec!["性别*".into()],
                unknown: vec!["姓别*".into(), "备注".into()]
            }
        );
        assert_eq!(
            e.to_string(),
            "the header row lacks the required column(s) 性别*; the header row has column(s) the template does not have: 姓别*, 备注 (check their spelling)"
        );
        let mut twice: Vec<&str> = COLUMNS.to_vec();
        twice.push("姓名");
        assert_eq!(
            read_table(csv_text(&twice, std::slice::from_ref(&r)).as_bytes(), None).unwrap_err(),
            ImportError::DuplicateColumn("姓名*".into())
        );
        // A file whose header row was deleted: the first data row is no header, and the error
        // does not repeat its ID number.
        let text = csv_text(&COLUMNS, std::slice::from_ref(&r));
        let data_only = text.split_once('\n').unwrap().1;
        let e = read_table(data_only.as_bytes(), None).unwrap_err();
        assert_eq!(e, ImportError::NoHeader);
        assert_eq!(read_table(b"", None).unwrap_err(), ImportError::Empty);
        assert_eq!(
            read_table(b" , ,\n", None).unwrap_err(),
            ImportError::NoHeader
        );
        assert_eq!(
            read_table(b"\xD0\xCF\x11\xE0rest", None).unwrap_err(),
            ImportError::NotATable("a legacy .xls workbook")
        );
    }

    #[test]
    fn a_title_row_is_skipped_and_blank_rows_keep_their_numbers() {
        let r1 = row("李明", &id("440106", "19480315", "123"), "男", "");
        let r2 = row("张丽", &id("440106", "19520704", "042"), "女", "");
        let text = csv_text(&COLUMNS, &[r1, r2]);
        let (header, rest) = text.split_once('\n').unwrap();
        let (first, second) = rest.split_once('\n').unwrap();
        let blank = ",".repeat(COLUMNS.len() - 1);
        let body =
            format!("老年人信息导入模板\n{header}\n{first}\n{blank}\n{second}{blank}\n{blank}\n");
        let c = check(body.as_bytes());
        assert_eq!(c.rows.iter().map(|r| r.row).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn trailing_empty_columns_are_ignored() {
        let r = row("李明", &id("440106", "19480315", "123"), "男", "");
        let text = csv_text(&COLUMNS, &[r]);
        let pad = ",".repeat(300);
        let body: String = text.lines().map(|l| format!("{l}{pad}\n")).collect();
        assert_eq!(check(body.as_bytes()).rows.len(), 1);
    }

    #[test]
    fn a_value_under_no_header_is_an_error() {
        let r = row("李明", &id("440106", "19480315", "123"), "男", "");
        let text = csv_text(&COLUMNS, &[r]);
        let (header, first) = text.split_once('\n').unwrap();
        let body = format!("{header}\n{},stray\n", first.trim_end());
        assert_eq!(
            read_table(body.as_bytes(), None).unwrap_err(),
            ImportError::DataWithoutHeader {
                row: 1,
                column: 57,
                letters: "BE".into()
            }
        );
    }

    #[test]
    fn more_row_checks() {
        let base = || row("李明", &id("440106", "19480315", "123"), "男", "");
        let one = |r: Vec<(&'static str, String)>| {
            let c = check(csv_text(&COLUMNS, &[r]).as_bytes());
            assert_no_numbers_in(&c);
            c.rejected
                .into_iter()
                .map(|r| (r.column, r.reason))
                .collect::<Vec<_>>()
        };
        let mut r = base();
        set(&mut r, "性别*", "1");
        assert_eq!(one(r), vec![]);
        let mut r = base();
        set(&mut r, "性别*", "M");
        assert_eq!(one(r), vec![("性别*".into(), "M is not 男 or 女".into())]);
        let mut r = base();
        set(&mut r, "身份证号*", "440106480315123");
        assert_eq!(
            one(r)[0].1,
            "a 15-digit first-generation ID number; give the 18-digit number (GB 11643-1999)"
        );
        let mut r = base();
        set(&mut r, "身份证号*", "4401061948031512é");
        assert_eq!(
            one(r)[0].1,
            "an ID-card number is 17 digits and a check digit or X; this one has 17 characters"
        );
        let mut r = base();
        set(&mut r, "身份证号*", &id("440106", "20300101", "123"));
        assert_eq!(
            one(r),
            vec![(
                "身份证号*".into(),
                "the birth date in the ID number 2030/01/01 is in the future".into()
            )]
        );
        let mut r = base();
        set(&mut r, "出生日期", "1948/13/15");
        assert_eq!(
            one(r),
            vec![(
                "出生日期".into(),
                "1948/13/15 is not a date (write it like 1960/12/23)".into()
            )]
        );
        let mut r = base();
        set(&mut r, "联系手机*", "13812345678、call me");
        assert_eq!(
            one(r),
            vec![("联系手机*".into(), format!("number 2 of 2: {NOT_A_PHONE}"))]
        );
        let mut r = base();
        set(&mut r, "婚姻状况*", "13812345678");
        assert_eq!(
            one(r)[0].1,
            "13*******78 is not a code of 婚姻状况 (1 unmarried, 2 married, 3 widowed, 4 divorced)"
        );
        let mut r = base();
        set(&mut r, "离退休时间(年)", "1975");
        assert_eq!(
            one(r),
            vec![(
                "离退休时间(年)".into(),
                "1975 is before 参加工作时间(年) 1980".into()
            )]
        );
        let mut r = base();
        set(&mut r, "是否已享受高龄津贴", "Y");
        set(&mut r, "血型", "ab");
        set(&mut r, "经济来源*", "1，4 6");
        let c = check(csv_text(&COLUMNS, &[r]).as_bytes());
        let card = &c.rows[0].card;
        assert_eq!(card.old_age_allowance, Some(true));
        assert_eq!(card.blood_type.as_deref(), Some("AB"));
        assert_eq!(
            card.income,
            vec!["pension", "minimum_living_allowance", "other"]
        );
        let mut r = base();
        set(&mut r, "经济来源*", "、");
        assert_eq!(
            one(r),
            vec![("经济来源*".into(), "经济来源 is required".into())]
        );
        let mut r = base();
        set(&mut r, "家属/亲戚姓名", "李子");
        set(&mut r, "与老年关系", "女儿");
        set(&mut r, "家属/联系电话", "12");
        assert_eq!(one(r), vec![("家属/联系电话".into(), NOT_A_PHONE.into())]);
    }

    #[test]
    fn dates_in_the_ways_people_write_them() {
        let d = NaiveDate::from_ymd_opt(1960, 12, 23);
        for s in [
            "1960/12/23",
            "1960-12-23",
            "1960.12.23",
            "19601223",
            "1960年12月23日",
        ] {
            assert_eq!(parse_date(s), d, "{s}");
        }
        assert_eq!(parse_date("1960/1/5"), NaiveDate::from_ymd_opt(1960, 1, 5));
        for s in [
            "1960/12/32",
            "60/12/23",
            "1960/12",
            "1960/12/23/1",
            "",
            "1960/+1/2",
        ] {
            assert_eq!(parse_date(s), None, "{s}");
        }
    }

    #[test]
    fn masks_leave_no_number_whole() {
        assert_eq!(shown("440111196012236789"), "44**************89");
        assert_eq!(shown("1105194912310021X"), "11*************1X");
        assert_eq!(shown("7"), "7");
        assert_eq!(column_letters(0), "A");
        assert_eq!(column_letters(25), "Z");
        assert_eq!(column_letters(26), "AA");
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator (no dependency): xorshift64.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let xlsx = xlsx_fixture(false);
        let csv = csv_text(&COLUMNS, &mixed_rows()).into_bytes();
        let rounds: usize = std::env::var("IMPORT_FUZZ_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400);
        for round in 0..rounds {
            let len = (next() % 300) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 4 == 1 {
                body.splice(0..0, b"PK\x03\x04".iter().copied());
            }
            // Damaged real files: a few bytes changed, or cut short.
            if round % 4 == 2 {
                body = xlsx.clone();
                for _ in 0..1 + next() % 8 {
                    let i = (next() as usize) % body.len();
                    body[i] = next() as u8;
                }
                if next() % 2 == 0 {
                    body.truncate((next() as usize) % body.len());
                }
            }
            if round % 4 == 3 {
                body = csv.clone();
                for _ in 0..1 + next() % 20 {
                    let i = (next() as usize) % body.len();
                    body[i] = next() as u8;
                }
            }
            if let Ok(t) = read_table(&body, None) {
                let _ = validate(&t, today());
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn read_table_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = read_table(&body, None);
            let _ = read_table(&body, Some("text/csv; charset=gb18030"));
        }

        #[test]
        fn any_cell_text_never_panics(cells in proptest::collection::vec(".{0,24}", 56)) {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(COLUMNS).unwrap();
            w.write_record(&cells).unwrap();
            let body = w.into_inner().unwrap();
            if let Ok(t) = read_table(&body, None) {
                let c = validate(&t, today());
                proptest::prop_assert_eq!(c.rows.len() + c.rejected.iter().map(|r| r.row).collect::<std::collections::BTreeSet<_>>().len(), t.len());
            }
        }
    }

    /// `cargo test --release -- --ignored fifty_thousand --nocapture`
    #[test]
    #[ignore]
    fn fifty_thousand_rows_in_well_under_a_second() {
        let mut rows = Vec::with_capacity(50_000);
        let start = NaiveDate::from_ymd_opt(1930, 1, 1).unwrap();
        for i in 0..50_000u32 {
            let birth = start + chrono::Days::new(u64::from(i % 12_000));
            let seq = format!("{:03}", (i / 12_000) * 2 + 1 + (i % 2));
            let gender = if i % 2 == 0 { "男" } else { "女" };
            let b = birth.format("%Y%m%d").to_string();
            rows.push(row(
                "李明",
                &id("440106", &b, &seq),
                gender,
                &birth.format("%Y/%m/%d").to_string(),
            ));
            set(rows.last_mut().unwrap(), "参加工作时间(年)", "");
            set(rows.last_mut().unwrap(), "离退休时间(年)", "");
        }
        let text = csv_text(&COLUMNS, &rows);
        let (gb, _, _) = encoding_rs::GB18030.encode(&text);
        for (what, body) in [("UTF-8", text.as_bytes()), ("GB18030", &gb[..])] {
            let t0 = std::time::Instant::now();
            let table = read_table(body, None).unwrap();
            let t1 = std::time::Instant::now();
            let c = validate(&table, today());
            let t2 = std::time::Instant::now();
            assert_eq!(
                c.rows.len(),
                50_000,
                "{:?}",
                &c.rejected[..c.rejected.len().min(3)]
            );
            eprintln!(
                "{what}: {} bytes, read {:?}, validate {:?}, total {:?}",
                body.len(),
                t1 - t0,
                t2 - t1,
                t2 - t0
            );
        }
    }
}
