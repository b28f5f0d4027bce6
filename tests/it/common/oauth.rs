//! A standard OAuth2 client library (`oauth2`) driving the authorization
//! server over this project's reqwest client: its own `reqwest` feature
//! targets another reqwest major version.

use std::future::Future;
use std::pin::Pin;

/// `oauth2`'s async HTTP client, sending through our reqwest client.
pub struct Transport(pub reqwest::Client);

type Exchange<'c> =
    Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, reqwest::Error>> + Send + 'c>>;

impl<'c> oauth2::AsyncHttpClient<'c> for Transport {
    type Error = reqwest::Error;
    type Future = Exchange<'c>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let response = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let mut answer = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                answer = answer.header(name, value);
            }
            let body = response.bytes().await?.to_vec();
            Ok(answer
                .body(body)
                .expect("status and headers came from a response"))
        })
    }
}
