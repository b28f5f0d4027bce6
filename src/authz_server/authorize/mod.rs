//! The authorization endpoint (RFC 6749 §3.1, §4.1, §4.2): the approval
//! page a resource owner logs in on and grants a client some scopes.
//!
//! GET shows the page: the login form, or the consent form once the
//! browser's session has a user, and only while that user is configured
//! with the credential they logged in with (`Current::user`): a reload
//! that changes their password or removes them signs them out. The forms
//! POST back here with the
//! request's OAuth parameters as hidden fields, the session's CSRF token
//! and `action` = `login`, `approve`, `deny` or `signout` (ends the
//! session and shows the login form again); every POST is validated
//! again from scratch (the request is never kept server-side), and a
//! successful one answers 303. A consent form is taken once: `approve`
//! and `deny` spend its CSRF token (the session goes on with a new one),
//! so the same form posted again is refused as a stale one and mints no
//! second code. Approval issues a code (bound to client,
//! redirect URI, PKCE challenge, user and granted scopes) or, for the
//! implicit grant, an access token in the fragment — never a refresh
//! token (§4.2.2). The resource owner may grant fewer scopes than asked.
//! Logins share the password grant's per-user limit; its wider limit
//! counts the caller's address here, not the client: a `client_id` is
//! anyone's to send, and counted against it, wrong logins would lock
//! every user of that client out.
//! Nothing here logs a password, code or token.

mod request;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use super::approval::{self, Approval, Page, Param, ScopeView, Step};
use super::error::OAuthError;
use super::form::Form;
use super::grants::{attempts::Source, issue_new, GrantContext};
use super::sessions::{self, Current, Sessions};
use super::settings::GrantType;
use super::store::CodeRecord;
use super::tokens::{self, Issue};
use crate::lockout::AddressKey;
use request::{Refusal, ResponseType, Valid, GRANT_SCOPE};

pub use request::encode_pairs;

const CSRF_FAILED: &str = "This form has expired or was not sent from this page. Please try again.";

/// What the resource owner entered, shown again when a form is refused.
#[derive(Debug, Default)]
struct Kept<'f> {
    username: Option<&'f str>,
    /// The scopes ticked on a refused consent form.
    ticked: Option<Vec<&'f str>>,
}

/// What the endpoint needs from the server, for one request.
pub struct AuthorizeContext<'a> {
    pub grants: GrantContext<'a>,
    pub sessions: &'a Sessions,
    pub approval: &'a Approval,
    /// TLS, or `https` from a trusted proxy: the cookie is then `Secure`.
    pub is_https: bool,
}

pub fn handle(cx: &AuthorizeContext<'_>, req: &Request<Bytes>) -> Response<Bytes> {
    if !navigated(req.headers()) {
        return error_page(cx, &OAuthError::NotNavigated);
    }
    let form = match read(cx, req) {
        Ok(form) => form,
        Err(error) => return error_page(cx, &error),
    };
    let valid = match request::validate(cx.grants.settings, &form) {
        Ok(valid) => valid,
        Err(Refusal::Page(error)) => return error_page(cx, &error),
        Err(Refusal::Redirect(target, error)) => return redirect_error(&target, &error),
    };
    let cookie = sessions::cookie_value(req.headers());
    // A store that cannot answer refuses the form: no session is assumed.
    let found = cookie.map(|id| cx.sessions.find(id, cx.grants.now));
    let session = match found.transpose() {
        Ok(session) => session.flatten(),
        Err(error) => return error_page(cx, &error.into()),
    };
    if reads_the_page(req.method()) {
        let session = match session {
            Some(session) => session,
            None => match start_anonymous(cx) {
                Ok(session) => session,
                Err(error) => return error_page(cx, &error),
            },
        };
        return show(cx, &valid, &session, StatusCode::OK, None, &Kept::default());
    }
    // A form another site posted comes without the session cookie
    // (SameSite=Lax): refused with no session started, whose cookie would
    // replace the owner's and sign them out.
    if session.is_none() && from_another_site(req.headers()) {
        return error_page(cx, &OAuthError::CrossSiteForm);
    }
    let session = match session {
        Some(session) if session.csrf_matches(form.get("csrf_token")) => session,
        other => {
            tracing::info!(client_id = %valid.client.client_id, "approval form refused: CSRF token missing or wrong");
            return refuse_stale(cx, &valid, &form, other);
        }
    };
    match form.get("action") {
        Some("login") => login(cx, req, &valid, &form, &session),
        Some("approve") => approve(cx, &valid, &form, &session),
        Some("signout") => sign_out(cx, req, &valid, &session),
        Some("deny") => {
            if let Some(refused) = spend_form(cx, &valid, &form, &session) {
                return refused;
            }
            tracing::info!(client_id = %valid.client.client_id, "authorization denied by the resource owner");
            redirect_error(&valid.target, &OAuthError::AccessDenied)
        }
        _ => error_page(
            cx,
            &OAuthError::InvalidRequest("action must be login, approve, deny or signout"),
        ),
    }
}

/// The form again, on `session` (a new anonymous one when there is
/// none), for a form whose CSRF token is missing, wrong or spent: 403,
/// nothing approved, what the owner entered kept.
fn refuse_stale(
    cx: &AuthorizeContext<'_>,
    valid: &Valid<'_>,
    form: &Form,
    session: Option<Current>,
) -> Response<Bytes> {
    let session = match session {
        Some(session) => session,
        None => match start_anonymous(cx) {
            Ok(session) => session,
            Err(error) => return error_page(cx, &error),
        },
    };
    let kept = Kept {
        username: form.get("username"),
        ticked: (form.get("action") == Some("approve")).then(|| form.all(GRANT_SCOPE).collect()),
    };
    show(
        cx,
        valid,
        &session,
        StatusCode::FORBIDDEN,
        Some(CSRF_FAILED),
        &kept,
    )
}

/// Takes a consent form (Allow or Deny) once: its CSRF token is spent,
/// and the same form posted again, or twice at once, is refused as a
/// stale one, so that one rendered form answers the client once. The
/// refusal, when the form was taken before (or cannot be taken now).
fn spend_form(
    cx: &AuthorizeContext<'_>,
    valid: &Valid<'_>,
    form: &Form,
    session: &Current,
) -> Option<Response<Bytes>> {
    let now = cx.grants.now;
    match cx.sessions.spend_csrf(session, now) {
        Ok(true) => None,
        Ok(false) => {
            tracing::info!(client_id = %valid.client.client_id, "approval form refused: taken already");
            // Shown with the session's token of now, when it lives on.
            Some(match cx.sessions.find(&session.id, now) {
                Ok(current) => refuse_stale(cx, valid, form, current),
                Err(error) => error_page(cx, &error.into()),
            })
        }
        Err(error) => Some(error_page(cx, &error.into())),
    }
}

/// Whether the browser, if it says how the request was made (W3C Fetch
/// Metadata, sent by every current browser), made it as the navigation of
/// a top-level page. The approval pages are the resource owner's own: a
/// script of a page on this origin (an API's upstream answers here too)
/// that could `fetch` one would read its CSRF token and approve in the
/// owner's name, and a frame is refused by the pages' headers anyway. A
/// client that sends no such field (no browser, or an old one) is not
/// refused: the CSRF token still keeps other sites out.
fn navigated(headers: &http::HeaderMap) -> bool {
    let is_or_absent = |name: &str, allowed: &[u8]| {
        headers
            .get(name)
            .is_none_or(|value| value.as_bytes() == allowed)
    };
    is_or_absent("sec-fetch-mode", b"navigate") && is_or_absent("sec-fetch-dest", b"document")
}

/// Whether the browser says the request came from another site (W3C
/// Fetch Metadata `Sec-Fetch-Site: cross-site`).
fn from_another_site(headers: &http::HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_some_and(|value| value.as_bytes() == b"cross-site")
}

/// Whether a request asks for the page (GET, and HEAD as its GET),
/// its parameters in the query, rather than posts its form.
fn reads_the_page(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// The request's parameters: the query of a GET, the form body of a POST.
fn read(cx: &AuthorizeContext<'_>, req: &Request<Bytes>) -> Result<Form, OAuthError> {
    // RFC 6749 §3.1: the endpoint requires TLS; the operator decides
    // whether "requires" is enforced here.
    if cx.grants.settings.require_https && !cx.is_https {
        return Err(OAuthError::InvalidRequest("HTTPS is required"));
    }
    let bytes: &[u8] = if reads_the_page(req.method()) {
        req.uri().query().unwrap_or("").as_bytes()
    } else {
        if !super::form::is_form(req.headers()) {
            return Err(OAuthError::InvalidRequest(
                "Content-Type must be application/x-www-form-urlencoded",
            ));
        }
        req.body()
    };
    // Repeated parameters are refused by `request::validate`, back to
    // the client when it and its redirect URI are known good.
    Ok(Form::parse_keeping_repeats(bytes)?)
}

fn login(
    cx: &AuthorizeContext<'_>,
    req: &Request<Bytes>,
    valid: &Valid<'_>,
    form: &Form,
    session: &Current,
) -> Response<Bytes> {
    let now = cx.grants.now;
    let kept = Kept {
        username: form.get("username"),
        ticked: None,
    };
    let (Some(username), Some(password)) = (form.get("username"), form.get("password")) else {
        let message = "Enter your username and password.";
        return show(
            cx,
            valid,
            session,
            StatusCode::BAD_REQUEST,
            Some(message),
            &kept,
        );
    };
    let source = Source::Address(AddressKey::of(cx.grants.address));
    let guarded = cx.grants.attempts.guarded(&source, username, now, || {
        cx.grants.users.verify(username, password)
    });
    match guarded {
        Err(retry_after) => {
            let message = "Too many failed attempts. Wait a minute and try again.";
            let mut page = show(
                cx,
                valid,
                session,
                StatusCode::TOO_MANY_REQUESTS,
                Some(message),
                &kept,
            );
            page.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return page;
        }
        Ok(false) => {
            tracing::info!(client_id = %valid.client.client_id, "approval login refused: wrong credentials");
            let message = "Wrong username or password.";
            return show(cx, valid, session, StatusCode::OK, Some(message), &kept);
        }
        Ok(true) => {}
    }
    // A new session on login: an id known before it is worth nothing now.
    // It holds the credential the user logged in with: a reload that
    // changes it (or removes the user) ends the sign-in.
    let Some(credential) = cx.grants.users.credential(username) else {
        // Verified just now, so configured: a user gone is no sign-in.
        let message = "Wrong username or password.";
        return show(cx, valid, session, StatusCode::OK, Some(message), &kept);
    };
    let renewed = match cx
        .sessions
        .renew(session, username.to_owned(), credential.to_owned(), now)
    {
        Ok(renewed) => renewed,
        Err(error) => return error_page(cx, &error.into()),
    };
    let params = valid.params.iter().map(|(n, v)| (*n, v.as_str()));
    let mut response =
        approval::redirect(&format!("{}?{}", req.uri().path(), encode_pairs(params)));
    set_cookie(cx, &mut response, &renewed);
    response
}

fn approve(
    cx: &AuthorizeContext<'_>,
    valid: &Valid<'_>,
    form: &Form,
    session: &Current,
) -> Response<Bytes> {
    let Some(user) = session.user(cx.grants.users) else {
        let message = "Please sign in first.";
        return show(
            cx,
            valid,
            session,
            StatusCode::OK,
            Some(message),
            &Kept::default(),
        );
    };
    // Only what was asked for can be granted, in the order asked.
    let ticked: Vec<&str> = form.all(GRANT_SCOPE).collect();
    let granted: Vec<String> = valid
        .scopes
        .iter()
        .filter(|scope| ticked.contains(&scope.as_str()))
        .cloned()
        .collect();
    if granted.is_empty() && !valid.scopes.is_empty() {
        let message = "Tick at least one permission, or deny the request.";
        let kept = Kept {
            username: None,
            ticked: Some(ticked),
        };
        return show(
            cx,
            valid,
            session,
            StatusCode::BAD_REQUEST,
            Some(message),
            &kept,
        );
    }
    if let Some(refused) = spend_form(cx, valid, form, session) {
        return refused;
    }
    let issued = match valid.response_type {
        ResponseType::Code => issue_code(cx, valid, user, &granted),
        ResponseType::Token => issue_token(cx, valid, user, &granted),
    };
    match issued {
        Ok(location) => {
            tracing::info!(
                client_id = %valid.client.client_id,
                username = user,
                scope = %granted.join(" "),
                "authorization approved"
            );
            approval::redirect(&location)
        }
        Err(error) => redirect_error(&valid.target, &error),
    }
}

/// "Not you? Sign out": the session ends, and the login form shows again
/// on a new one, for the same request.
fn sign_out(
    cx: &AuthorizeContext<'_>,
    req: &Request<Bytes>,
    valid: &Valid<'_>,
    session: &Current,
) -> Response<Bytes> {
    // The new session counts against its address's starts like any
    // other: sign-outs raced with one cookie would each start one.
    if let Err(error) = cx.sessions.end(session) {
        return error_page(cx, &error.into());
    }
    let fresh = match start_anonymous(cx) {
        Ok(fresh) => fresh,
        Err(error) => return error_page(cx, &error),
    };
    tracing::info!(client_id = %valid.client.client_id, "resource owner signed out on the approval page");
    let params = valid.params.iter().map(|(n, v)| (*n, v.as_str()));
    let mut response =
        approval::redirect(&format!("{}?{}", req.uri().path(), encode_pairs(params)));
    set_cookie(cx, &mut response, &fresh);
    response
}

/// RFC 6749 §4.1.2: a code of 256 random bits, stored by its hash only.
fn issue_code(
    cx: &AuthorizeContext<'_>,
    valid: &Valid<'_>,
    user: &str,
    granted: &[String],
) -> Result<String, OAuthError> {
    let code = tokens::random_token();
    let lifetime = cx.grants.settings.authorization_code_lifetime.as_secs();
    cx.grants.store.put_code(&CodeRecord {
        hash: tokens::hash_token(&code),
        client_id: valid.client.client_id.clone(),
        redirect_uri: valid.target.redirect_uri.clone().into_owned(),
        redirect_uri_given: valid.target.given,
        code_challenge: valid.challenge.clone(),
        code_challenge_method: valid.challenge.as_ref().map(|_| "S256".to_owned()),
        scope: granted.join(" "),
        username: user.to_owned(),
        expires_at: cx.grants.now.saturating_add(lifetime),
    })?;
    Ok(valid.target.location(&[("code", &code)]))
}

/// RFC 6749 §4.2.2: the access token in the fragment, no refresh token.
fn issue_token(
    cx: &AuthorizeContext<'_>,
    valid: &Valid<'_>,
    user: &str,
    granted: &[String],
) -> Result<String, OAuthError> {
    let issue = Issue {
        client: valid.client,
        username: Some(user),
        scopes: granted,
        grant_type: GrantType::Implicit,
        family: None,
    };
    let response = issue_new(&cx.grants, issue, false)?;
    crate::metrics::get()
        .tokens_issued
        .with_label_values(&[GrantType::Implicit.as_str()])
        .inc();
    let expires_in = response.expires_in.map(|secs| secs.to_string());
    let mut pairs = vec![
        ("access_token", response.access_token.as_str()),
        ("token_type", response.token_type),
    ];
    if let Some(expires_in) = &expires_in {
        pairs.push(("expires_in", expires_in));
    }
    pairs.push(("scope", &response.scope));
    Ok(valid.target.location(&pairs))
}

/// The login or consent form for `valid`, on `session`.
fn show(
    cx: &AuthorizeContext<'_>,
    valid: &Valid<'_>,
    session: &Current,
    status: StatusCode,
    error: Option<&str>,
    kept: &Kept<'_>,
) -> Response<Bytes> {
    let settings = cx.grants.settings;
    let user = session.user(cx.grants.users);
    let scopes = valid
        .client
        .scopes
        .iter()
        .map(|name| ScopeView {
            name,
            description: settings
                .scopes
                .iter()
                .find(|s| s.name == *name)
                .map_or("", |s| s.description.as_str()),
            requested: valid.scopes.contains(name),
            checked: valid.scopes.contains(name)
                && kept
                    .ticked
                    .as_ref()
                    .is_none_or(|ticked| ticked.contains(&name.as_str())),
        })
        .collect();
    let page = Page {
        action: if user.is_some() {
            Step::Consent
        } else {
            Step::Login
        },
        client_name: &valid.client.name,
        client_id: &valid.client.client_id,
        scopes,
        user,
        username: kept.username,
        csrf_token: &session.session.csrf_token,
        error,
        params: valid
            .params
            .iter()
            .map(|(name, value)| Param { name, value })
            .collect(),
    };
    let origin = valid.target.origin();
    let mut response = cx.approval.respond(status, &page, origin.as_deref());
    if session.is_new {
        set_cookie(cx, &mut response, session);
    }
    response
}

/// A page for a request that cannot be answered to a client: the
/// resource owner reads what it means for them, the log the detail.
/// A new anonymous session for the caller, unless its address started too
/// many this minute (`sessions::STARTS_PER_MINUTE`).
fn start_anonymous(cx: &AuthorizeContext<'_>) -> Result<Current, OAuthError> {
    let from = AddressKey::of(cx.grants.address);
    cx.sessions
        .may_start(from, cx.grants.now)
        .map_err(|retry_after| OAuthError::TooManySessions { retry_after })?;
    Ok(cx.sessions.start(cx.grants.now)?)
}

fn error_page(cx: &AuthorizeContext<'_>, error: &OAuthError) -> Response<Bytes> {
    let (status, _, description) = error.parts();
    tracing::info!(%error, "authorization request answered with an error page");
    let page = Page::error(in_user_words(status, description));
    let mut response = cx.approval.respond(status, &page, None);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let OAuthError::TooManySessions { retry_after } = error {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
    }
    response
}

/// What a refused authorization request means for the resource owner.
fn in_user_words(status: StatusCode, description: &str) -> &'static str {
    if status == StatusCode::TOO_MANY_REQUESTS {
        "Too many sign-in pages were opened from your network. Nothing was approved. \
         Please wait a minute and try again."
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        "Signing in is not possible right now. Nothing was approved. \
         Please try again in a moment."
    } else if status.is_server_error() {
        "Something went wrong on our side. Nothing was approved. \
         Go back to the application and try again."
    } else if description.contains("redirect_uri") || description.contains("redirect URI") {
        "This application is not allowed to send you to that address. \
         Go back to the application and tell its owner."
    } else if description.contains("client") {
        "This application is not known here, so you cannot sign in to it with this link."
    } else if description.contains("page of its own") {
        "This sign-in page opens only on its own, not inside another page. \
         Go back to the application and try again."
    } else if description.contains("HTTPS") {
        "This page must be opened over a secure (https) connection."
    } else if description.contains("larger than") {
        "This request is too large. Go back to the application and try again."
    } else {
        "This sign-in link is not valid. Go back to the application and try again."
    }
}

/// RFC 6749 §4.1.2.1, §4.2.2.1: the error goes back to the client.
fn redirect_error(target: &request::Target<'_>, error: &OAuthError) -> Response<Bytes> {
    let (_, code, description) = error.parts();
    approval::redirect(&target.location(&[("error", code), ("error_description", description)]))
}

fn set_cookie(cx: &AuthorizeContext<'_>, response: &mut Response<Bytes>, session: &Current) {
    for cookie in sessions::set_cookies(&session.id, cx.is_https) {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
}
