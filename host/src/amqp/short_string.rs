//! Short strings built from data. amq-protocol's `ShortString::from` panics past 255 bytes,
//! and a reply text that names a long queue (or a peer's answer) can be longer: every short
//! string Warren builds from anything but a literal goes through [`short`], which cuts at a
//! character boundary as RabbitMQ cuts its reply texts.

use amq_protocol::types::ShortString;

/// The longest short string the wire can carry.
pub const MAX: usize = 255;

/// `s` cut to at most 255 bytes, at a character boundary.
pub fn truncate(s: &str) -> &str {
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A short string of `s`, cut to fit.
pub fn short(s: &str) -> ShortString {
    ShortString::try_new(truncate(s)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        assert_eq!(short("ok").as_str(), "ok");
        let ascii = "x".repeat(300);
        assert_eq!(short(&ascii).as_str().len(), 255);
        // 'é' is two bytes: 127 of them and a half would be 255 bytes.
        let accented = format!("a{}", "é".repeat(200));
        let cut = short(&accented);
        assert!(cut.as_str().len() <= 255);
        assert_eq!(cut.as_str().len(), 255);
        assert!(accented.starts_with(cut.as_str()));
        let wide = "日".repeat(100);
        assert_eq!(short(&wide).as_str().len(), 255);
    }
}
