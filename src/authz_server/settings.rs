//! The authorization server's settings are compiled with the rest of the
//! configuration (`config::authz`); this module names them for its users.

pub use crate::config::authz::{
    Client, GrantType, RedirectUri, ScopeDef, Settings, TokenFormat, User,
};
