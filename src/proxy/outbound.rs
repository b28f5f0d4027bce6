//! Outbound auth ("Outbound Auth - Transport"): the `Authorization` header
//! the upstream receives. The client's own is passed on only with
//! `delegate: incoming_token`.

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::config::snapshot::Outbound;

pub fn apply(outbound: &Outbound, headers: &mut HeaderMap) {
    match outbound {
        Outbound::None => {
            headers.remove(AUTHORIZATION);
        }
        Outbound::Header(value) => {
            headers.insert(AUTHORIZATION, value.clone());
        }
        Outbound::Delegate => {}
    }
}
