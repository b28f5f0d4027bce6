mod common;

use common::{Gateway, Upstream};

fn travels(upstream: &Upstream) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: "Time travels"
  version: "1.0"
  base_path: /travels
  upstream: {{ url: "{}" }}
  scopes:
  - name: ViewTickets
    resources: ["GET /bookings", "GET /bookings/{{id}}"]
  - name: BookTickets
    resources: ["POST /bookings"]
  resources: ["GET /bookings/special", "GET /files/{{rest*}}"]
"#,
        upstream.url("/api")
    )
}

#[tokio::test]
async fn forwards_with_base_path_stripped_and_query_kept() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    let resp = gw.get("/travels/bookings/7?x=1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().uri, "/api/bookings/7?x=1");
    gw.shutdown().await;
}

#[tokio::test]
async fn undeclared_path_is_404_and_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    assert_eq!(gw.get("/travels/admin").await.status(), 404);
    assert_eq!(gw.get("/elsewhere").await.status(), 404);
    assert_eq!(upstream.hits(), 0);
    gw.shutdown().await;
}
