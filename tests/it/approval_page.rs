//! The approval page as the resource owner sees it: the service's branding
//! (`authorization_server.branding`) and account on every page, "Not you?
//! Sign out", what was entered kept when a form is refused, errors in the
//! owner's words — over real HTTP, and in a real headless Chromium at
//! 360 px and 1280 px (no horizontal scroll, the button in view).

use crate::authorize::{
    code_from, code_query, exchange, pkce, query, yaml, Browser, Options, Reply, CALLBACK,
};
use crate::common::chromium::Chromium;
use crate::common::{Env, Gateway};

const BRANDING: &str = r##"{ name: "Acme <Travel>", logo_url: "https://cdn.acme.example/logo.svg", primary_color: "#7A1FA2", support_url: "https://help.acme.example/sign-in?from=oauth&x=1" }"##;

async fn branded() -> Gateway {
    Gateway::start(&yaml(&Options {
        branding: Some(BRANDING),
        ..Options::default()
    }))
    .await
}

fn assert_branded(page: &Reply) {
    let html = &page.body;
    assert!(html.contains("Acme &lt;Travel&gt;"), "the service:\n{html}");
    assert!(!html.contains("Acme <Travel>"), "escaped:\n{html}");
    assert!(
        html.contains("<img src=\"https:&#x2f;&#x2f;cdn.acme.example&#x2f;logo.svg\""),
        "the logo:\n{html}"
    );
    assert!(html.contains("--accent: #7a1fa2"), "the colour:\n{html}");
    assert!(
        html.contains("--on-accent: #ffffff"),
        "readable on it:\n{html}"
    );
    assert!(
        html.contains("from=oauth&amp;x=1\">Help</a>"),
        "the support link:\n{html}"
    );
    assert!(
        html.contains("Account: <strong>http:&#x2f;&#x2f;localhost:4485</strong>"),
        "the account (issuer):\n{html}"
    );
    assert!(!html.contains("<script"), "{html}");
    // Framing and caching rules unchanged; images from the logo's origin
    // only; still no script.
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(
        csp.starts_with(
            "default-src 'none'; style-src 'self' 'unsafe-inline'; \
             img-src https://cdn.acme.example; form-action 'self'"
        ),
        "{csp}"
    );
    assert!(csp.ends_with("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("script-src"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn branding_and_the_account_show_on_every_page() {
    let gw = branded().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view book", Some(&challenge));
    let login = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    assert_eq!(login.status, 200);
    assert_branded(&login);
    assert!(login.body.contains("Sign in to Acme &lt;Travel&gt;"));
    let consent = browser.login(&authorize).await;
    assert_branded(&consent);
    assert!(consent.body.contains("Allow BookYourTicket?"));
    let error = browser
        .get(&format!(
            "/oauth2/authorize?{}",
            query(&[
                ("response_type", "code"),
                ("client_id", "bookyourticket"),
                ("redirect_uri", "https://evil.example/cb"),
            ])
        ))
        .await;
    assert_eq!(error.status, 400);
    assert_branded(&error);
    assert!(error
        .body
        .contains("This application is not allowed to send you to that address"));
}

#[tokio::test]
async fn without_branding_the_issuer_names_the_service_and_no_image_is_allowed() {
    let gw = Gateway::start(&yaml(&Options::default())).await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let login = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    assert!(
        login.body.contains("Sign in to localhost"),
        "{}",
        login.body
    );
    assert!(!login.body.contains("<img"));
    let csp = login.header("content-security-policy").expect("CSP");
    assert!(!csp.contains("img-src"), "{csp}");
}

#[tokio::test]
async fn a_wrong_password_keeps_the_username() {
    let gw = branded().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let login = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    let wrong = browser
        .submit(
            &login,
            "login",
            &[("username", "alice"), ("password", "not-it")],
        )
        .await;
    assert_eq!(wrong.status, 200);
    assert!(wrong.body.contains("Wrong username or password."));
    let username = input(&wrong.body, "username");
    assert!(username.contains("value=\"alice\""), "{username}");
    // The password is never sent back.
    assert!(!wrong.body.contains("not-it"));
    assert!(!input(&wrong.body, "password").contains("value="));
    // And the right one still signs in from there.
    let right = browser
        .submit(
            &wrong,
            "login",
            &[("username", "alice"), ("password", "wonderland")],
        )
        .await;
    assert_eq!(right.status, 303, "{}", right.body);
}

/// The `<input …>` tag with `id`.
fn input<'h>(html: &'h str, id: &str) -> &'h str {
    let start = html
        .find(&format!("<input id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in:\n{html}"));
    let end = html[start..].find('>').map_or(html.len(), |e| start + e);
    &html[start..end]
}

#[tokio::test]
async fn a_refused_csrf_check_keeps_the_ticked_scopes() {
    let gw = branded().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view book cancel", Some(&challenge));
    let consent = browser.login(&authorize).await;
    let mut fields: Vec<(String, String)> = consent
        .form()
        .hidden
        .into_iter()
        .map(|(name, value)| match name.as_str() {
            "csrf_token" => (name, "forged".to_owned()),
            _ => (name, value),
        })
        .collect();
    fields.push(("grant_scope".into(), "book".into()));
    fields.push(("action".into(), "approve".into()));
    let refused = browser.post("/oauth2/authorize", &fields).await;
    assert_eq!(refused.status, 403);
    assert!(refused.header("location").is_none());
    assert!(refused.body.contains("This form has expired"));
    let boxes = refused.form().checkboxes;
    let ticked: Vec<&str> = boxes
        .iter()
        .filter(|(_, _, checked)| *checked)
        .map(|(_, value, _)| value.as_str())
        .collect();
    assert_eq!(boxes.len(), 3, "{boxes:?}");
    assert_eq!(ticked, ["book"], "the owner's choice, not the defaults");
    // Sent again from the page (its fresh token), exactly that is granted.
    let location = {
        let again = browser
            .submit(&refused, "approve", &[("grant_scope", "book")])
            .await;
        assert_eq!(again.status, 303, "{}", again.body);
        again.location().to_owned()
    };
    assert!(location.starts_with(CALLBACK), "{location}");

    // A refused login keeps the username (never the password).
    let mut anonymous = Browser::new(&gw);
    let login = anonymous
        .get(&format!("/oauth2/authorize?{authorize}"))
        .await;
    let mut fields: Vec<(String, String)> = login
        .form()
        .hidden
        .into_iter()
        .filter(|(name, _)| name != "csrf_token")
        .collect();
    fields.push(("username".into(), "alice".into()));
    fields.push(("password".into(), "wonderland".into()));
    fields.push(("action".into(), "login".into()));
    let refused = anonymous.post("/oauth2/authorize", &fields).await;
    assert_eq!(refused.status, 403);
    assert!(input(&refused.body, "username").contains("value=\"alice\""));
    assert!(!refused.body.contains("wonderland"));
}

#[tokio::test]
async fn not_you_sign_out_ends_the_session() {
    let gw = branded().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let consent = browser.login(&authorize).await;
    assert!(
        consent
            .body
            .contains("Signed in as <strong>alice</strong>. Not you?"),
        "{}",
        consent.body
    );
    let old_cookie = browser.cookie.clone();
    let old_fields = consent.form().hidden;
    let signed_out = browser.submit(&consent, "signout", &[]).await;
    assert_eq!(signed_out.status, 303, "{}", signed_out.body);
    let next = signed_out.location().to_owned();
    assert!(next.starts_with("/oauth2/authorize?"), "{next}");
    assert_ne!(browser.cookie, old_cookie, "a new session cookie");
    assert_eq!(signed_out.header("cache-control"), Some("no-store"));
    // The same request, back on the login form.
    let login = browser.get(&next).await;
    assert_eq!(login.status, 200);
    assert!(login.form().text_inputs.contains(&"username".to_owned()));
    assert!(login.body.contains("BookYourTicket"));
    // The old session is gone: its cookie and CSRF token approve nothing.
    browser.cookie = old_cookie;
    let mut replay = old_fields;
    replay.push(("grant_scope".into(), "view".into()));
    replay.push(("action".into(), "approve".into()));
    let refused = browser.post("/oauth2/authorize", &replay).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.header("location").is_none());
    assert!(!refused.body.contains("Signed in as"));
}

#[tokio::test]
async fn only_the_browsers_own_navigation_gets_the_pages() {
    let gw = branded().await;
    let mut browser = Browser::new(&gw);
    browser.fetch = Some(("navigate", "document"));
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let consent = browser.login(&authorize).await;
    assert!(
        consent.body.contains("Allow BookYourTicket?"),
        "{}",
        consent.body
    );
    // A script of a page on this origin, with the signed-in cookie: what
    // it fetches holds no CSRF token, and a form it posts approves nothing.
    for (mode, dest) in [
        ("cors", "empty"),
        ("same-origin", "empty"),
        ("navigate", "iframe"),
    ] {
        browser.fetch = Some((mode, dest));
        let read = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
        assert_eq!(read.status, 403, "{mode} {dest}: {}", read.body);
        assert!(!read.body.contains("csrf_token"), "{}", read.body);
        assert!(read.body.contains("opens only on its own"), "{}", read.body);
        let posted = browser
            .submit(&consent, "approve", &[("grant_scope", "view")])
            .await;
        assert_eq!(posted.status, 403, "{mode} {dest}: {}", posted.body);
        assert!(posted.header("location").is_none());
    }
    // The browser's own form post still approves.
    browser.fetch = Some(("navigate", "document"));
    let approved = browser
        .submit(&consent, "approve", &[("grant_scope", "view")])
        .await;
    assert_eq!(approved.status, 303, "{}", approved.body);
    assert!(approved
        .location()
        .starts_with(&format!("{CALLBACK}?code=")));
}

#[tokio::test]
async fn a_script_on_the_same_origin_cannot_read_the_page_in_headless_chromium() {
    let gw = branded().await;
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let chromium = Chromium::start().await;
    chromium
        .goto(&gw.url(&format!("/oauth2/authorize?{authorize}")))
        .await;
    chromium.type_into("#username", "alice").await;
    chromium.type_into("#password", "wonderland").await;
    chromium.click("button[value=login]").await;
    chromium.wait_for("button[value=approve]").await;
    // Signed in. A page of the same origin fetches the consent page with
    // the session's cookie, as an API's page could.
    chromium.goto(&gw.url("/oauth2/jwks")).await;
    let read = chromium
        .eval(
            "return fetch('/oauth2/authorize?' + arguments[0], { credentials: 'include' })\
             .then(r => r.text().then(t => [r.status, t.includes('csrf_token')]))",
            serde_json::json!([authorize]),
        )
        .await;
    assert_eq!(read, serde_json::json!([403, false]), "{read}");
    // Navigated to, it is the consent page still.
    chromium
        .goto(&gw.url(&format!("/oauth2/authorize?{authorize}")))
        .await;
    chromium.wait_for("button[value=approve]").await;
}

#[tokio::test]
async fn branding_is_validated_when_the_configuration_is_compiled() {
    for (branding, expected) in [
        (
            r#"{ primary_color: "blue" }"#,
            "branding.primary_color `blue` is not a #rrggbb colour",
        ),
        (
            r##"{ primary_color: "#12345" }"##,
            "is not a #rrggbb colour",
        ),
        (
            r#"{ logo_url: "http://cdn.example/logo.png" }"#,
            "branding.logo_url is not an https URL or a path on this server",
        ),
        (
            r#"{ logo_url: "//cdn.example/logo.png" }"#,
            "branding.logo_url is not an https URL",
        ),
        (
            r#"{ logo_url: "https://cdn.example/a\"onload=x.png" }"#,
            "branding.logo_url is not an https URL",
        ),
        (
            r#"{ support_url: "javascript:alert(1)" }"#,
            "branding.support_url is not an https URL",
        ),
        (
            r#"{ name: "" }"#,
            "branding.name is empty, too long or has control characters",
        ),
        (r##"{ colour: "#ffffff" }"##, "colour"),
    ] {
        let yaml = yaml(&Options {
            branding: Some(branding),
            ..Options::default()
        });
        let error = match Gateway::try_start(&yaml, Env::new()).await {
            Ok(_) => panic!("accepted branding {branding}"),
            Err(error) => error,
        };
        assert!(error.contains(expected), "{branding}: {error}");
        // FILE:LINE:COL: error: …, like every configuration finding.
        assert!(
            error.contains("microgateway.yaml:") && error.contains(": error: "),
            "{error}"
        );
    }
    let long = format!("{{ name: \"{}\" }}", "x".repeat(81));
    let yaml = yaml(&Options {
        branding: Some(&long),
        ..Options::default()
    });
    assert!(Gateway::try_start(&yaml, Env::new()).await.is_err());
}

/// Asserts that the page fits `width` and that `button` is in view.
async fn assert_fits(chromium: &Chromium, what: &str, button: &str) {
    chromium.wait_for(button).await;
    let layout = chromium.layout(button).await;
    assert!(
        layout.scroll_width <= layout.viewport_width,
        "{what}: scrolls horizontally: {layout:?}"
    );
    assert!(layout.visible, "{what}: {button} not in view: {layout:?}");
}

#[tokio::test]
async fn the_pages_fit_360_and_1280_pixels_in_headless_chromium() {
    // A relative logo (not served here: the layout must not depend on
    // it), a long name, a light colour.
    let branding = r##"{ name: "Acme Intercontinental Time Travel Reservations", logo_url: "/static/logo.svg", primary_color: "#ffd54f", support_url: "https://help.acme.example/" }"##;
    let gw = Gateway::start(&yaml(&Options {
        branding: Some(branding),
        ..Options::default()
    }))
    .await;
    let (verifier, challenge) = pkce();
    let authorize = gw.url(&format!(
        "/oauth2/authorize?{}",
        code_query("bookyourticket", "view book cancel", Some(&challenge))
    ));
    let chromium = Chromium::start().await;

    // A phone: 360 × 800.
    chromium.viewport(360, 800, true).await;
    chromium.goto(&authorize).await;
    assert_fits(&chromium, "login at 360 px", "button[value=login]").await;
    chromium.type_into("#username", "alice").await;
    chromium.type_into("#password", "wrong").await;
    chromium.click("button[value=login]").await;
    chromium.wait_for(".error").await;
    let kept = chromium
        .eval(
            "return document.getElementById('username').value",
            serde_json::json!([]),
        )
        .await;
    assert_eq!(kept, "alice", "the username survives a wrong password");
    assert_fits(&chromium, "login error at 360 px", "button[value=login]").await;
    chromium.type_into("#password", "wonderland").await;
    chromium.click("button[value=login]").await;
    assert_fits(&chromium, "consent at 360 px", "button[value=approve]").await;
    let bad_redirect = gw.url(&format!(
        "/oauth2/authorize?{}",
        query(&[
            ("response_type", "code"),
            ("client_id", "bookyourticket"),
            (
                "redirect_uri",
                "https://evil.example/a/very/long/path/that/should/wrap"
            ),
        ])
    ));
    chromium.goto(&bad_redirect).await;
    chromium.wait_for("p.error").await;
    let layout = chromium.layout("h1").await;
    assert!(
        layout.scroll_width <= layout.viewport_width,
        "error page at 360 px: {layout:?}"
    );

    // A desktop: 1280 × 800; the session is still signed in.
    chromium.viewport(1280, 800, false).await;
    chromium.goto(&authorize).await;
    assert_fits(&chromium, "consent at 1280 px", "button[value=approve]").await;
    assert_fits(&chromium, "sign-out at 1280 px", "button[value=signout]").await;
    chromium.click("button[value=signout]").await;
    assert_fits(&chromium, "login at 1280 px", "button[value=login]").await;
    chromium.type_into("#username", "alice").await;
    chromium.type_into("#password", "wonderland").await;
    chromium.click("button[value=login]").await;
    // Allow: the browser follows the redirect to the client (the CSP's
    // form-action lets it), with a code.
    chromium.wait_for("button[value=approve]").await;
    chromium.click("button[value=approve]").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let landed = loop {
        let landed = chromium.current_url().await;
        if landed.starts_with(&format!("{CALLBACK}?code=")) {
            break landed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the browser went to {landed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };

    // The signed-in browser calls an API of the same port with the token
    // the code buys: its session cookie, sent to the approval page alone,
    // never reaches the upstream (the echo shows a `cookie` it got).
    let (status, tokens) = exchange(&gw, &code_from(&landed), Some(&verifier)).await;
    assert_eq!(status, 200, "{tokens}");
    chromium.goto(&gw.url("/oauth2/jwks")).await;
    let seen = chromium
        .eval(
            "return fetch('/travels/bookings', { headers: { authorization: 'Bearer ' + arguments[0] } })\
             .then(r => r.json()).then(echo => [echo.path, echo.headers.cookie || null])",
            serde_json::json!([tokens["access_token"]]),
        )
        .await;
    assert_eq!(seen, serde_json::json!(["/bookings", null]), "{seen}");
}
