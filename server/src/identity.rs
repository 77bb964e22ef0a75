//! Who asked for an operation: a plain value the engine records and the authentication layer
//! fills (a leaf: it depends on nothing).

/// Who is calling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Subject: Monoskope user id (UUID), or an API token's user name.
    pub id: String,
    /// Display name.
    pub name: String,
    /// E-mail, when the token has one.
    pub email: String,
    /// An API (machine) token.
    pub machine: bool,
}

impl Identity {
    /// How records and logs name the caller: the e-mail when there is one, else the subject.
    pub fn label(&self) -> String {
        if self.email.is_empty() {
            self.id.clone()
        } else {
            self.email.clone()
        }
    }
}
