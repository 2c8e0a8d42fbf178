//! The user contract's field rules, written once: user-srv enforces them, and user-web's
//! OpenAPI document states them from here, so the two cannot drift.

/// A mobile number's length in ASCII digits (mainland numbers, as mxshop checks them).
pub const MOBILE_DIGITS: usize = 11;
/// The digit every mobile number starts with.
pub const MOBILE_FIRST_DIGIT: u8 = b'1';
/// Password length in characters.
pub const PASSWORD_MIN_CHARS: usize = 6;
pub const PASSWORD_MAX_CHARS: usize = 64;
/// Nickname length in characters (and never blank).
pub const NICK_NAME_MAX_CHARS: usize = 32;

/// Whether `mobile` is [`MOBILE_DIGITS`] ASCII digits starting with [`MOBILE_FIRST_DIGIT`].
pub fn is_mobile(mobile: &str) -> bool {
    mobile.len() == MOBILE_DIGITS
        && mobile.as_bytes().first() == Some(&MOBILE_FIRST_DIGIT)
        && mobile.bytes().all(|b| b.is_ascii_digit())
}

/// [`is_mobile`] as a regular expression, for documents.
pub fn mobile_pattern() -> String {
    format!(
        "^{}[0-9]{{{}}}$",
        char::from(MOBILE_FIRST_DIGIT),
        MOBILE_DIGITS - 1
    )
}

/// [`is_mobile`] in words, for error messages and documents.
pub fn mobile_rule() -> String {
    format!(
        "{MOBILE_DIGITS} digits starting with {}",
        char::from(MOBILE_FIRST_DIGIT)
    )
}
