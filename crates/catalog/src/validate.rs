use serde::Serialize;
use utoipa::ToSchema;

/// One invalid field of a request, named by its JSON path (`price.currency`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the field, e.g. `price.amount_minor`.
    pub field: String,
    /// What is wrong, in words a person understands.
    pub message: String,
}

/// Every invalid field of one request; never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("{} invalid field(s): {}", .0.len(), .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Records an error for `field`.
    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// Parses one field, recording its error under `field` and returning `None` when it is invalid.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.push(field, message);
                None
            }
        }
    }

    /// Turns a collection of errors into a `Result`.
    pub fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, ValidationErrors> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

/// Checks a human-readable text: trimmed length within bounds, no control characters.
pub(crate) fn text(raw: &str, what: &str, min: usize, max: usize) -> Result<String, String> {
    let t = raw.trim();
    let n = t.chars().count();
    if n < min {
        return Err(if min == 1 {
            format!("{what} must not be empty")
        } else {
            format!("{what} must be at least {min} characters")
        });
    }
    if n > max {
        return Err(format!("{what} must be at most {max} characters (got {n})"));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(t.to_owned())
}
