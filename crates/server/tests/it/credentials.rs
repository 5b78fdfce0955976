//! Credentials, checked for what they claim and kept out of the logs: JWT claims that the
//! configuration requires (`aud`, `iss`, `exp`), `crit` headers, and the real binary at
//! `--log trace` authenticating a WebSocket with its first frame (issue #12, findings 5 and
//! 14, and the `crit` header).

use crate::harness::HttpConfig;
use crate::harness::TestApp;
use crate::harness::{AuthMode, JwtConfig};
use crate::harness::{Server, spindle};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use store::Backend;
use store::testing::TempDir;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn token(header: &Header, claims: &Value) -> String {
    encode(header, claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

async fn status(app: &TestApp, token: &str) -> (StatusCode, Value) {
    let request = Request::post("/threads")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let reply = app.send(request).await;
    (reply.status, reply.body)
}

/// With `--jwt-audience` and `--jwt-issuer`, a token lacking `aud` or `iss` is refused, as
/// is one lacking `exp`; and a token with a `crit` header is refused whatever it lists.
async fn jwt_claims_required_and_crit_refused(backend: Backend) {
    let jwt = JwtConfig {
        secret: Some(SECRET.into()),
        audience: Some("spindle".into()),
        issuer: Some("https://issuer.test".into()),
        ..JwtConfig::default()
    };
    let Some(app) = TestApp::with(backend, AuthMode::Jwt, &jwt, HttpConfig::default()).await else {
        return;
    };
    let now = chrono::Utc::now().timestamp();
    let good =
        json!({"sub": "carol", "exp": now + 600, "aud": "spindle", "iss": "https://issuer.test"});
    assert_eq!(status(&app, &token(&Header::default(), &good)).await.0, StatusCode::OK);
    for claim in ["aud", "iss", "exp", "sub"] {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(claim);
        let (code, body) = status(&app, &token(&Header::default(), &claims)).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "without {claim}: {body}");
        assert_eq!(body["code"], "unauthorized");
        assert!(body["detail"].as_str().unwrap().contains("invalid bearer token"), "{body}");
    }
    for crit in [vec!["exp".to_owned()], vec!["b64".to_owned()], vec![]] {
        let header = Header { crit: Some(crit.clone()), ..Header::default() };
        let (code, body) = status(&app, &token(&header, &good)).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "crit {crit:?}: {body}");
        assert!(body["detail"].as_str().unwrap().contains("critical"), "{body}");
    }

    // Without an audience or issuer configured, tokens need neither.
    let plain = JwtConfig { secret: Some(SECRET.into()), ..JwtConfig::default() };
    let Some(app) = TestApp::with(backend, AuthMode::Jwt, &plain, HttpConfig::default()).await
    else {
        return;
    };
    let bare = json!({"sub": "carol", "exp": now + 600});
    assert_eq!(status(&app, &token(&Header::default(), &bare)).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_claims_required_and_crit_refused_sqlite() {
    jwt_claims_required_and_crit_refused(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_claims_required_and_crit_refused_postgres() {
    jwt_claims_required_and_crit_refused(Backend::Postgres).await;
}

/// At `--log trace`, a WebSocket authenticated by its first frame (and requests with a key in
/// a header) leave no trace of the key in the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_carry_no_credentials() {
    let dir = TempDir::new("trace-logs");
    let out =
        spindle().args(["keys", "create", "--user", "alice"]).current_dir(&dir.0).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let server = Server::start_in(&dir.0, &["--auth", "keys", "--log", "trace"]);
    let addr = server.addr.clone();

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
    ws.send(Message::text(json!({"type": "auth", "token": key}).to_string())).await.unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");
    ws.send(Message::text(json!({"type": "ping"}).to_string())).await.unwrap();
    assert!(ws.next().await.unwrap().unwrap().to_text().unwrap().contains("pong"));
    ws.close(None).await.unwrap();
    let _ = ws.next().await;

    let log = String::from_utf8(server.terminate().stderr).unwrap();
    assert!(log.contains("websocket connected"), "the connection was logged");
    let secret = &key["spindle_".len()..];
    assert!(!log.contains(secret), "the key appears in the trace output");
    // tungstenite logs payloads as hex at trace.
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!log.contains(&hex), "the key appears hex-encoded in the trace output");
}
