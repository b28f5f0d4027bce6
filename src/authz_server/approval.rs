//! The approval page: a `minijinja` template (HTML autoescaping always on)
//! rendered for one of three steps — log in, consent, or an error that
//! cannot be sent back to the client — and the headers every page and
//! redirect of the authorization endpoint carries.
//!
//! The template is the configured `approval_page` (checked when the
//! configuration was compiled) or the built-in
//! `config/templates/approval.html`; its top comment lists the variables.
//! Pages are never cached, framed or leak a referrer. A template that fails
//! while rendering yields a fixed page, and its error (never a value of the
//! request) is logged.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use minijinja::{AutoEscape, Environment};
use serde::Serialize;

use crate::config::authz::Branding;

/// The built-in approval page.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../config/templates/approval.html");

const NAME: &str = "approval.html";

/// RFC 9700 §4.16 (clickjacking) and §4.2.4 (referrer): no framing, no
/// referrer, no scripts; forms post back here only.
const CSP: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'";

/// Which form the page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Login,
    Consent,
    Error,
}

/// One scope of the client, as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeView<'a> {
    pub name: &'a str,
    pub description: &'a str,
    /// Asked for by this request: only these can be granted.
    pub requested: bool,
    /// Ticked when the page shows (all requested ones, unless the
    /// resource owner's earlier choice is being shown again).
    pub checked: bool,
}

/// One OAuth parameter of the request, posted back as a hidden field.
#[derive(Debug, Clone, Serialize)]
pub struct Param<'a> {
    pub name: &'static str,
    pub value: &'a str,
}

/// The template's variables.
#[derive(Debug, Clone, Serialize)]
pub struct Page<'a> {
    pub action: Step,
    pub client_name: &'a str,
    pub client_id: &'a str,
    pub scopes: Vec<ScopeView<'a>>,
    pub user: Option<&'a str>,
    /// The username to fill in on the login form (after a failed try).
    pub username: Option<&'a str>,
    pub csrf_token: &'a str,
    pub error: Option<&'a str>,
    pub params: Vec<Param<'a>>,
}

/// What every page shows of the service, from `branding` and `issuer`.
#[derive(Debug, Clone, Serialize)]
struct Brand {
    /// The service the resource owner signs in to: the brand name, else
    /// the issuer's host.
    name: String,
    logo_url: Option<String>,
    primary_color: Option<String>,
    on_primary_color: Option<String>,
    support_url: Option<String>,
}

/// The variables as the template sees them: the page's and the brand's.
#[derive(Serialize)]
struct Context<'p, 'a> {
    #[serde(flatten)]
    page: &'p Page<'a>,
    brand: &'p Brand,
    /// The account the resource owner signs in with: the issuer.
    issuer: &'p str,
}

impl<'a> Page<'a> {
    /// An error page: nothing to post, no client to trust.
    pub fn error(message: &'a str) -> Page<'a> {
        Page {
            action: Step::Error,
            client_name: "",
            client_id: "",
            scopes: Vec::new(),
            user: None,
            username: None,
            csrf_token: "",
            error: Some(message),
            params: Vec::new(),
        }
    }
}

/// The compiled approval template.
pub struct Approval {
    env: Environment<'static>,
    brand: Brand,
    issuer: String,
    /// [`CSP`], with `img-src` for a logo.
    csp: String,
}

impl Approval {
    /// Compiles `source`, or the built-in page when `None`, for the
    /// service `branding` and `issuer` describe.
    pub fn new(
        source: Option<&str>,
        branding: &Branding,
        issuer: &str,
    ) -> Result<Approval, minijinja::Error> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        let source = source.unwrap_or(DEFAULT_TEMPLATE).to_owned();
        env.add_template_owned(NAME, source)?;
        let host = issuer
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.host().map(str::to_owned))
            .unwrap_or_else(|| issuer.to_owned());
        let brand = Brand {
            name: branding.name.clone().unwrap_or(host),
            logo_url: branding.logo_url.clone(),
            primary_color: branding.primary_color.clone(),
            on_primary_color: branding.on_primary_color.clone(),
            support_url: branding.support_url.clone(),
        };
        // A logo is the one thing loaded from elsewhere: from exactly its
        // origin (validated when compiled), or from this server.
        let csp = match &branding.logo_origin {
            Some(origin) => {
                CSP.replace("; form-action", &format!("; img-src {origin}; form-action"))
            }
            None => CSP.to_owned(),
        };
        Ok(Approval {
            env,
            brand,
            issuer: issuer.to_owned(),
            csp,
        })
    }

    /// The page as an HTML response with `status`. `redirect_origin` is
    /// the origin the page's forms may end up redirected to (the client's
    /// redirect URI): Chrome and Safari apply `form-action` to the
    /// redirect that follows a form submission too.
    pub fn respond(
        &self,
        status: StatusCode,
        page: &Page<'_>,
        redirect_origin: Option<&str>,
    ) -> Response<Bytes> {
        let rendered = self.env.get_template(NAME).and_then(|template| {
            template.render(minijinja::value::Serde(Context {
                page,
                brand: &self.brand,
                issuer: &self.issuer,
            }))
        });
        let (status, body) = match rendered {
            Ok(body) => (status, body),
            Err(error) => {
                tracing::error!(%error, "the approval page template failed to render");
                (StatusCode::INTERNAL_SERVER_ERROR, FALLBACK.to_owned())
            }
        };
        let csp = match redirect_origin {
            Some(origin) => self.csp.replace(
                "form-action 'self'",
                &format!("form-action 'self' {origin}"),
            ),
            None => self.csp.clone(),
        };
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static(CSP)),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        protect(headers);
        response
    }
}

/// Headers for every response of the authorization endpoint, redirects
/// included (their `Location` may carry a code or token).
pub fn protect(headers: &mut http::HeaderMap) {
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A redirect (303: after a POST the browser follows with GET).
pub fn redirect(location: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    match HeaderValue::from_str(location) {
        Ok(value) => {
            *response.status_mut() = StatusCode::SEE_OTHER;
            response.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => {
            // Built from validated parts and percent-encoded values; a
            // failure here is a bug, answered without a redirect.
            tracing::error!("an authorization redirect is not a valid header value");
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    protect(response.headers_mut());
    response
}

const FALLBACK: &str = "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Authorization unavailable</title></head><body><main><h1>Authorization unavailable</h1>\
<p>This page cannot be shown right now. Return to the application and try again later.</p>\
</main></body></html>";

#[cfg(test)]
mod tests {
    use super::*;

    fn page<'a>(step: Step, error: Option<&'a str>) -> Page<'a> {
        Page {
            action: step,
            client_name: "Book<Your>Ticket",
            client_id: "bookyourticket",
            scopes: vec![
                ScopeView {
                    name: "view",
                    description: "View your bookings",
                    requested: true,
                    checked: true,
                },
                ScopeView {
                    name: "cancel",
                    description: "Cancel bookings",
                    requested: false,
                    checked: false,
                },
            ],
            user: Some("alice"),
            username: None,
            csrf_token: "csrf-1",
            error,
            params: vec![Param {
                name: "state",
                value: "\"><script>x</script>",
            }],
        }
    }

    fn plain(source: Option<&str>) -> Result<Approval, minijinja::Error> {
        Approval::new(source, &Branding::default(), "http://localhost:4485")
    }

    fn body(response: &Response<Bytes>) -> String {
        String::from_utf8(response.body().to_vec()).expect("utf-8")
    }

    #[test]
    fn the_default_page_escapes_and_lists_requested_scopes() {
        let approval = plain(None).expect("template");
        let response = approval.respond(StatusCode::OK, &page(Step::Consent, None), None);
        let html = body(&response);
        assert!(html.contains("Book&lt;Your&gt;Ticket"), "{html}");
        assert!(!html.contains("<script>x"), "{html}");
        assert!(html.contains("View your bookings"));
        assert!(
            !html.contains("Cancel bookings"),
            "not requested: not shown"
        );
        assert!(html.contains("csrf-1"));
        assert_eq!(response.headers()["x-frame-options"], "DENY");
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(response.headers()["content-security-policy"], CSP);
    }

    #[test]
    fn login_and_error_steps_render() {
        let approval = plain(None).expect("template");
        let login = body(&approval.respond(
            StatusCode::OK,
            &page(Step::Login, Some("Wrong username or password.")),
            Some("http://localhost:8000"),
        ));
        assert!(login.contains("type=\"password\""));
        assert!(login.contains("Wrong username or password."));
        let error = approval.respond(StatusCode::BAD_REQUEST, &Page::error("Unknown"), None);
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(!body(&error).contains("<form"));
    }

    #[test]
    fn the_redirect_origin_joins_form_action() {
        let approval = plain(Some("{{ client_id }}")).expect("template");
        let response = approval.respond(
            StatusCode::OK,
            &page(Step::Consent, None),
            Some("http://localhost:8000"),
        );
        assert_eq!(
            response.headers()["content-security-policy"],
            "default-src 'none'; style-src 'self' 'unsafe-inline'; \
             form-action 'self' http://localhost:8000; frame-ancestors 'none'"
        );
    }

    #[test]
    fn branding_is_shown_escaped_and_an_external_logo_joins_img_src() {
        let branding = Branding {
            name: Some("Acme <Bank>".into()),
            logo_url: Some("https://cdn.acme.example/logo.svg".into()),
            logo_origin: Some("https://cdn.acme.example".into()),
            primary_color: Some("#ffcc00".into()),
            on_primary_color: Some("#000000".into()),
            support_url: Some("https://help.acme.example/?a=1&b=2".into()),
        };
        let approval =
            Approval::new(None, &branding, "https://login.acme.example").expect("template");
        let response = approval.respond(StatusCode::OK, &page(Step::Consent, None), None);
        let html = body(&response);
        assert!(html.contains("Acme &lt;Bank&gt;"), "{html}");
        assert!(
            html.contains("src=\"https:&#x2f;&#x2f;cdn.acme.example&#x2f;logo.svg\""),
            "{html}"
        );
        assert!(html.contains("#ffcc00"), "{html}");
        assert!(
            html.contains("https://login.acme.example")
                || html.contains("https:&#x2f;&#x2f;login.acme.example"),
            "{html}"
        );
        assert!(html.contains("b=2"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert_eq!(
            response.headers()["content-security-policy"],
            "default-src 'none'; style-src 'self' 'unsafe-inline'; \
             img-src https://cdn.acme.example; form-action 'self'; frame-ancestors 'none'"
        );
        let unbranded = plain(None).expect("template");
        let html = body(&unbranded.respond(StatusCode::OK, &page(Step::Login, None), None));
        assert!(
            html.contains("localhost"),
            "the issuer's host names the service: {html}"
        );
    }

    #[test]
    fn a_render_failure_shows_a_fixed_page() {
        let approval = plain(Some("{{ client_id | nosuchfilter }}")).expect("compiles");
        let response = approval.respond(StatusCode::OK, &page(Step::Consent, None), None);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body(&response).contains("Authorization unavailable"));
    }
}
