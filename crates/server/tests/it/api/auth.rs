//! Credentials and the HTTP surface around the routes: API keys, JWTs (HS256, ES256, RS256
//! JWKS), local mode, the body limit, CORS and the OpenAPI document.

use super::*;

store::on_both_backends!(TestApp =>
    missing_and_bad_credentials_are_401,
);

async fn missing_and_bad_credentials_are_401(app: &TestApp) {
    let key = app.key("alice").await;
    let no_key = app.send(Request::post("/threads/search").body(Body::empty()).unwrap()).await;
    no_key.headers.get("www-authenticate").expect("WWW-Authenticate on 401");
    no_key.error(StatusCode::UNAUTHORIZED, "unauthorized", "missing credentials");
    app.post("spindle_wrong", "/threads/search", json!({})).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid or revoked",
    );
    let bearer = Request::post("/threads/search")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(bearer).await.status, StatusCode::OK);
    // Public routes need no key.
    for uri in ["/ok", "/info", "/healthz", "/openapi.json"] {
        assert_eq!(
            app.send(Request::get(uri).body(Body::empty()).unwrap()).await.status,
            StatusCode::OK,
            "{uri}"
        );
    }
    // A revoked key stops working at once.
    let listed = app.store().list_api_keys().await.unwrap();
    app.store().revoke_api_key(listed[0].key_id).await.unwrap();
    app.post(&key, "/threads/search", json!({})).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid or revoked",
    );
}

#[tokio::test]
async fn jwt_auth_maps_sub_to_a_user_and_checks_exp_aud_iss() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let jwt = JwtConfig {
        secret: Some(secret.into()),
        audience: Some("spindle".into()),
        issuer: Some("https://issuer.test".into()),
        ..JwtConfig::default()
    };
    let app = TestApp::with(Backend::Sqlite, AuthMode::KeysAndJwt, &jwt, HttpConfig::default())
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let token = |claims: Value| {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let call = |token: String| {
        let r = Request::post("/threads")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        app.send(r)
    };
    let good =
        json!({"sub": "carol", "exp": now + 600, "aud": "spindle", "iss": "https://issuer.test"});
    let created = call(token(good.clone())).await.ok();
    // The thread belongs to carol: an API key of carol's sees it.
    let key = app.key("carol").await;
    app.get(&key, &format!("/threads/{}", created["thread_id"].as_str().unwrap())).await.ok();
    let mut expired = good.clone();
    expired["exp"] = json!(now - 3600);
    call(token(expired)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("other");
    call(token(wrong_aud)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.test");
    call(token(wrong_iss)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    let mut future = good.clone();
    future["nbf"] = json!(now + 3600);
    call(token(future)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    let forged = encode(
        &Header::default(),
        &good,
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    call(forged).await.error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid bearer token");
    call("not.a.jwt".into()).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
}

#[tokio::test]
async fn local_mode_needs_no_credentials() {
    let app = TestApp::with(
        Backend::Sqlite,
        AuthMode::Local,
        &JwtConfig::default(),
        HttpConfig::default(),
    )
    .await
    .unwrap();
    let created = app.send(Request::post("/threads").body(Body::empty()).unwrap()).await.ok();
    let id = created["thread_id"].as_str().unwrap();
    app.send(Request::get(format!("/threads/{id}")).body(Body::empty()).unwrap()).await.ok();
}

#[tokio::test]
async fn body_limit_is_configurable() {
    let http = HttpConfig { body_limit: 1024, ..HttpConfig::default() };
    let app =
        TestApp::with(Backend::Sqlite, AuthMode::Local, &JwtConfig::default(), http).await.unwrap();
    let body = json!({"metadata": {"x": "a".repeat(2000)}}).to_string();
    let r = Request::post("/threads")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    app.send(r).await.error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "larger than");
    assert_eq!(
        app.store()
            .list_threads(app.store().ensure_user("local").await.unwrap().user_id, 10, 0)
            .await
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn cors_allows_the_sdk_headers_and_exposes_locations() {
    let app = TestApp::with(
        Backend::Sqlite,
        AuthMode::Keys,
        &JwtConfig::default(),
        HttpConfig::default(),
    )
    .await
    .unwrap();
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/threads")
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "x-api-key,content-type,last-event-id,authorization",
        )
        .body(Body::empty())
        .unwrap();
    let r = app.send(preflight).await;
    assert!(r.status.is_success(), "{:?}", r.status);
    let allowed = r.headers["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    for h in ["x-api-key", "content-type", "last-event-id", "authorization"] {
        assert!(allowed.contains(h), "{allowed} lacks {h}");
    }
    let r = app
        .send(
            Request::get("/ok")
                .header("origin", "http://localhost:3000")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let exposed = r.headers["access-control-expose-headers"].to_str().unwrap().to_lowercase();
    assert!(exposed.contains("content-location") && exposed.contains("location"), "{exposed}");
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let app = TestApp::new(Backend::Sqlite).await.unwrap();
    let doc = app.send(Request::get("/openapi.json").body(Body::empty()).unwrap()).await.ok();
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("get", "/ok"),
        ("get", "/info"),
        ("get", "/healthz"),
        ("post", "/assistants/search"),
        ("post", "/assistants/count"),
        ("get", "/assistants/{assistant_id}"),
        ("post", "/threads"),
        ("post", "/threads/search"),
        ("post", "/threads/count"),
        ("get", "/threads/{thread_id}"),
        ("patch", "/threads/{thread_id}"),
        ("delete", "/threads/{thread_id}"),
        ("get", "/threads/{thread_id}/state"),
        ("post", "/threads/{thread_id}/state"),
        ("get", "/threads/{thread_id}/state/{checkpoint_id}"),
        ("post", "/threads/{thread_id}/state/checkpoint"),
        ("post", "/threads/{thread_id}/history"),
        ("get", "/threads/{thread_id}/history"),
        ("post", "/threads/{thread_id}/runs"),
        ("get", "/threads/{thread_id}/runs"),
        ("post", "/threads/{thread_id}/runs/stream"),
        ("post", "/threads/{thread_id}/runs/wait"),
        ("get", "/threads/{thread_id}/runs/{run_id}"),
        ("delete", "/threads/{thread_id}/runs/{run_id}"),
        ("post", "/threads/{thread_id}/runs/{run_id}/cancel"),
        ("get", "/threads/{thread_id}/runs/{run_id}/join"),
        ("get", "/threads/{thread_id}/runs/{run_id}/stream"),
        ("get", "/threads/{thread_id}/stream"),
        ("post", "/runs"),
        ("post", "/runs/stream"),
        ("post", "/runs/wait"),
    ];
    for (method, path) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from openapi.json"
        );
    }
    // And every documented operation is really served: never the router's 404 or 405.
    let key = app.key("alice").await;
    let some_id = ThreadId::new().to_string();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let uri = path
                .replace("{thread_id}", &some_id)
                .replace("{checkpoint_id}", &some_id)
                .replace("{run_id}", &some_id)
                .replace("{assistant_id}", "echo");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
            let r = app.call(&key, method.clone(), &uri, body).await;
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(r.body["detail"], "no such route", "{method} {path}");
        }
    }
}

/// Runs openssl (Debian's, on every machine of this kind) to make test keys.
fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn jwt_with_an_es256_public_key_and_an_rs256_jwks() {
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let dir = std::env::temp_dir().join(format!("spindle-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &path("ec.pem"),
    ]);
    openssl(&["pkey", "-in", &path("ec.pem"), "-pubout", "-out", &path("ec.pub")]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &path("rsa.pem"),
    ]);
    let modulus = openssl(&["rsa", "-in", &path("rsa.pem"), "-noout", "-modulus"]);
    let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"}]});
    std::fs::write(path("jwks.json"), jwks.to_string()).unwrap();

    let claims = json!({"sub": "dave", "exp": chrono::Utc::now().timestamp() + 600});
    let ec_token = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&std::fs::read(path("ec.pem")).unwrap()).unwrap(),
    )
    .unwrap();
    let mut rsa_header = Header::new(Algorithm::RS256);
    rsa_header.kid = Some("k1".into());
    let rsa_key = EncodingKey::from_rsa_pem(&std::fs::read(path("rsa.pem")).unwrap()).unwrap();
    let rsa_token = encode(&rsa_header, &claims, &rsa_key).unwrap();
    rsa_header.kid = Some("other".into());
    let unknown_kid = encode(&rsa_header, &claims, &rsa_key).unwrap();

    let bearer = |token: &str| {
        Request::post("/threads/search")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let pem = JwtConfig { public_key: Some(path("ec.pub").into()), ..JwtConfig::default() };
    let app =
        TestApp::with(Backend::Sqlite, AuthMode::Jwt, &pem, HttpConfig::default()).await.unwrap();
    app.send(bearer(&ec_token)).await.ok();
    app.send(bearer(&rsa_token)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );

    let set = JwtConfig { jwks: Some(path("jwks.json").into()), ..JwtConfig::default() };
    let app =
        TestApp::with(Backend::Sqlite, AuthMode::Jwt, &set, HttpConfig::default()).await.unwrap();
    app.send(bearer(&rsa_token)).await.ok();
    app.send(bearer(&unknown_kid)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    app.send(bearer(&ec_token)).await.error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid bearer token",
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn jwt_mode_without_a_key_is_a_configuration_error() {
    let err = Auth::new(AuthMode::Jwt, &JwtConfig::default()).unwrap_err();
    assert!(err.contains("--jwt-secret"), "{err}");
    let short = JwtConfig { secret: Some("short".into()), ..JwtConfig::default() };
    assert!(Auth::new(AuthMode::Jwt, &short).unwrap_err().contains("at least 32 bytes"));
}
