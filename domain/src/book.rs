//! A book and its validated parts.
//!
//! Every part has a `parse` constructor and no other way in, so a [`Book`] that exists is a
//! valid book. Deserializing goes through the same `parse` (`serde(try_from)`), so an item read
//! back from a table or a stream is held to the same rules as input from a client.

use std::fmt;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// The longest accepted book name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The most authors a book may list.
pub const MAX_AUTHORS: usize = 20;
/// The longest accepted author name, in characters.
pub const MAX_AUTHOR_CHARS: usize = 100;
/// The accepted publication years: from the oldest written works to the near future.
pub const PUBLISHED_YEARS: RangeInclusive<i32> = -3000..=2100;

/// A book: the item of the books table and the data of every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Book {
    /// The book's name, which is also its key.
    pub name: BookName,
    /// The authors, in the order given.
    pub authors: Authors,
    /// The year the book was first published.
    pub published_year: PublishedYear,
}

/// The part of a book that a value failed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookField {
    /// [`Book::name`].
    Name,
    /// [`Book::authors`].
    Authors,
    /// [`Book::published_year`].
    PublishedYear,
}

impl BookField {
    /// The field's name as clients and items spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Authors => "authors",
            Self::PublishedYear => "publishedYear",
        }
    }
}

impl fmt::Display for BookField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that cannot be part of a book, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidBook {
    /// Which field is wrong.
    pub field: BookField,
    /// What is wrong with it, in words a client can act on.
    pub problem: String,
}

impl InvalidBook {
    fn new(field: BookField, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// Trims `raw`, normalises it to NFC and checks it is non-empty, short enough (counted after
/// normalisation) and free of control and format characters.
///
/// NFC makes text that looks the same one key: "Cafe\u{301}" (a combining accent) and
/// "Caf\u{e9}" are one name, as a reader sees it. Format characters (general category Cf:
/// zero-width spaces and joiners, bidi embeddings, overrides and isolates, the BOM, the soft
/// hyphen) are invisible, so with them two names that look the same are two keys, and bidi
/// controls make a name shown in a client read differently from what it is.
fn parse_text(raw: &str, field: BookField, what: &str, max: usize) -> Result<String, InvalidBook> {
    let text: String = raw.trim().nfc().collect();
    if text.is_empty() {
        return Err(InvalidBook::new(field, format!("{what} must not be empty")));
    }
    if text.chars().count() > max {
        return Err(InvalidBook::new(
            field,
            format!("{what} must be at most {max} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(InvalidBook::new(
            field,
            format!("{what} must not contain control characters"),
        ));
    }
    if let Some(format) = text
        .chars()
        .find(|c| c.general_category() == GeneralCategory::Format)
    {
        return Err(InvalidBook::new(
            field,
            format!(
                "{what} must not contain invisible format characters (U+{:04X})",
                u32::from(format)
            ),
        ));
    }
    Ok(text)
}

/// A text newtype that can only hold valid text: `parse` is the one way in ([`parse_text`]
/// with the field, words and limit given), serde goes through it, and the text comes out with
/// `as_str`, `Display` and `String::from`.
macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $field:expr, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses the text as a client or an item gives it.
            pub fn parse(raw: &str) -> Result<Self, InvalidBook> {
                parse_text(raw, $field, $what, $max).map(Self)
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidBook;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(text: $name) -> Self {
                text.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_type!(
    /// A book's name: trimmed and in NFC, 1 to [`MAX_NAME_CHARS`] characters, no control or
    /// format characters.
    BookName,
    BookField::Name,
    "name",
    MAX_NAME_CHARS
);

text_type!(
    /// One author's name: trimmed and in NFC, 1 to [`MAX_AUTHOR_CHARS`] characters, no control
    /// or format characters.
    Author,
    BookField::Authors,
    "an author",
    MAX_AUTHOR_CHARS
);

/// A book's authors: 1 to [`MAX_AUTHORS`] of them, order kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Authors(Vec<Author>);

impl Authors {
    /// Parses a list of author names; the error names the first author that is wrong.
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, InvalidBook> {
        if raw.is_empty() {
            return Err(InvalidBook::new(
                BookField::Authors,
                "a book needs at least one author",
            ));
        }
        if raw.len() > MAX_AUTHORS {
            return Err(InvalidBook::new(
                BookField::Authors,
                format!("a book may list at most {MAX_AUTHORS} authors"),
            ));
        }
        raw.iter()
            .enumerate()
            .map(|(i, author)| {
                Author::parse(author.as_ref()).map_err(|e| {
                    InvalidBook::new(
                        BookField::Authors,
                        format!("author {}: {}", i + 1, e.problem),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// The authors, in order.
    pub fn as_slice(&self) -> &[Author] {
        &self.0
    }

    /// The authors' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(Author::as_str)
    }
}

impl TryFrom<Vec<String>> for Authors {
    type Error = InvalidBook;
    fn try_from(raw: Vec<String>) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Authors> for Vec<String> {
    fn from(authors: Authors) -> Self {
        authors.0.into_iter().map(String::from).collect()
    }
}

/// The year a book was first published, within [`PUBLISHED_YEARS`] (negative is BCE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i32", into = "i32")]
pub struct PublishedYear(i32);

impl PublishedYear {
    /// Parses a year.
    pub fn parse(year: i32) -> Result<Self, InvalidBook> {
        if PUBLISHED_YEARS.contains(&year) {
            Ok(Self(year))
        } else {
            Err(InvalidBook::new(
                BookField::PublishedYear,
                format!(
                    "the year must be between {} and {}",
                    PUBLISHED_YEARS.start(),
                    PUBLISHED_YEARS.end()
                ),
            ))
        }
    }

    /// The year as a number.
    pub fn get(self) -> i32 {
        self.0
    }
}

impl TryFrom<i32> for PublishedYear {
    type Error = InvalidBook;
    fn try_from(year: i32) -> Result<Self, Self::Error> {
        Self::parse(year)
    }
}

impl From<PublishedYear> for i32 {
    fn from(year: PublishedYear) -> Self {
        year.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(BookName::parse("  Dune ").unwrap().as_str(), "Dune");
        let empty = BookName::parse("   ").unwrap_err();
        assert_eq!(empty.field, BookField::Name);
        assert!(empty.problem.contains("empty"), "{empty}");
        assert!(BookName::parse(&"é".repeat(MAX_NAME_CHARS)).is_ok());
        let long = BookName::parse(&"é".repeat(MAX_NAME_CHARS + 1)).unwrap_err();
        assert!(long.problem.contains("at most 200"), "{long}");
        assert!(BookName::parse("Du\nne").is_err());
    }

    #[test]
    fn names_are_held_in_nfc_so_that_look_alikes_are_one_key() {
        let decomposed = BookName::parse("Cafe\u{301}").unwrap();
        let composed = BookName::parse("Caf\u{e9}").unwrap();
        assert_eq!(decomposed, composed);
        assert_eq!(decomposed.as_str(), "Caf\u{e9}");
        assert_eq!(
            Authors::parse(&["Ame\u{301}lie"]).unwrap().names().next(),
            Some("Am\u{e9}lie")
        );
        // The length counts after normalisation: 200 decomposed "é"s are 200 characters.
        assert!(BookName::parse(&"e\u{301}".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(BookName::parse(&"e\u{301}".repeat(MAX_NAME_CHARS + 1)).is_err());
    }

    #[test]
    fn format_characters_are_refused_in_names_and_authors() {
        for c in [
            '\u{ad}', '\u{200b}', '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}', '\u{202a}',
            '\u{202e}', '\u{2060}', '\u{2064}', '\u{2066}', '\u{2069}', '\u{feff}',
        ] {
            let name = BookName::parse(&format!("Du{c}ne")).unwrap_err();
            assert_eq!(name.field, BookField::Name);
            assert!(name.problem.contains("format characters"), "{name}");
            let author = Authors::parse(&[format!("Frank{c} Herbert")]).unwrap_err();
            assert_eq!(author.field, BookField::Authors);
        }
        // Text that merely looks unusual is fine: other scripts, emoji, a right-to-left name.
        for name in ["Война и мир", "שלום", "三体", "Dune 🏜"] {
            assert!(BookName::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn authors_need_one_to_twenty_non_empty_names() {
        let authors = Authors::parse(&["Terry Pratchett", " Neil Gaiman "]).unwrap();
        assert_eq!(
            authors.names().collect::<Vec<_>>(),
            ["Terry Pratchett", "Neil Gaiman"]
        );
        let none = Authors::parse::<&str>(&[]).unwrap_err();
        assert_eq!(none.field, BookField::Authors);
        let blank = Authors::parse(&["A", ""]).unwrap_err();
        assert_eq!(
            blank.to_string(),
            "authors: author 2: an author must not be empty"
        );
        assert!(Authors::parse(&vec!["A"; MAX_AUTHORS]).is_ok());
        assert!(Authors::parse(&vec!["A"; MAX_AUTHORS + 1]).is_err());
    }

    #[test]
    fn years_must_be_plausible() {
        assert_eq!(PublishedYear::parse(1965).unwrap().get(), 1965);
        assert!(PublishedYear::parse(-800).is_ok());
        let absurd = PublishedYear::parse(99_999).unwrap_err();
        assert_eq!(absurd.field, BookField::PublishedYear);
        assert!(PublishedYear::parse(-3001).is_err());
    }

    #[test]
    fn deserializing_applies_the_same_rules() {
        let book: Book = serde_json::from_str(
            r#"{"name":" Dune","authors":["Frank Herbert"],"publishedYear":1965}"#,
        )
        .unwrap();
        assert_eq!(book.name.as_str(), "Dune");
        let err =
            serde_json::from_str::<Book>(r#"{"name":"Dune","authors":[],"publishedYear":1965}"#)
                .unwrap_err();
        assert!(err.to_string().contains("at least one author"), "{err}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever a client sends, a name that parses is in NFC, within its length, free of
            /// control and format characters, and parses to itself: one key per name as seen.
            #[test]
            fn a_parsed_name_is_normal_and_stable(raw in "\\PC{0,40}|.{0,40}") {
                if let Ok(name) = BookName::parse(&raw) {
                    let text = name.as_str();
                    prop_assert!(unicode_normalization::is_nfc(text));
                    prop_assert!(text.chars().count() <= MAX_NAME_CHARS);
                    prop_assert!(!text.chars().any(|c| c.is_control()
                        || c.general_category() == GeneralCategory::Format));
                    prop_assert_eq!(BookName::parse(text), Ok(name.clone()));
                }
            }

            /// Composed and decomposed spellings of one text are one name.
            #[test]
            fn spellings_of_one_text_are_one_name(raw in "[a-zA-Z\u{c0}-\u{17f} ]{1,40}") {
                let decomposed: String = raw.nfd().collect();
                prop_assert_eq!(BookName::parse(&raw), BookName::parse(&decomposed));
            }
        }
    }
}
