//! Helpers for error types that keep their causes.

/// A boxed cause, for errors whose source comes from a library without a
/// concrete error type of its own (wasmtime's `Error` is one: it cannot
/// implement `std::error::Error`, but converts into this).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `error` and every cause below it, joined by `": "`: the one-line form
/// for places that show an error as text (an API answer, a log field).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let next = inner.to_string();
        // Some wrappers repeat their cause in their own message.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chains_every_cause() {
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&error), "outer: inner");
    }
}
