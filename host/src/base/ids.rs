//! Names the broker makes up.

use base64::Engine;

/// RabbitMQ's generated names: a prefix and 16 random bytes, base64url without padding.
pub fn generated_name(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
