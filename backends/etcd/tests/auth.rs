//! Authentication against a real etcd: off, turned on over the JSON API, users with
//! limited roles, token expiry and re-authentication.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::time::Duration;

use etcd_json::testing::EtcdServer;
use etcd_json::{Client, ClientOptions, Error, Permission, WatchOptions};
use futures::StreamExt;

/// With auth off, a client configured with credentials just works; with auth on,
/// tokens are required, used, limited by roles, and renewed when they expire.
#[tokio::test]
async fn auth_disabled_then_enabled() {
    let etcd = EtcdServer::start_with_args(&["--auth-token-ttl=1"]);
    let endpoint = etcd.endpoint();
    let anonymous = Client::connect([&endpoint], ClientOptions::new()).await.unwrap();
    let with_user =
        Client::connect([&endpoint], ClientOptions::new().with_user("root", "rootpw")).await.unwrap();
    with_user.put("/open", "1", None).await.unwrap();

    // Turn auth on through the JSON API.
    let err = anonymous.auth_enable().await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err:?}");
    anonymous.user_add("root", "rootpw").await.unwrap();
    anonymous.role_add("root").await.unwrap();
    anonymous.user_grant_role("root", "root").await.unwrap();
    anonymous.user_add("alice", "alicepw").await.unwrap();
    anonymous.role_add("app").await.unwrap();
    anonymous.role_grant_permission("app", Permission::ReadWrite, "/app/", "/app0").await.unwrap();
    anonymous.user_grant_role("alice", "app").await.unwrap();
    anonymous.auth_enable().await.unwrap();

    // No token.
    let err = anonymous.put("/x", "1", None).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err:?}");
    // Wrong password.
    let err = Client::connect([&endpoint], ClientOptions::new().with_user("root", "nope")).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err:?}");

    // The client created while auth was off authenticates when its requests are refused.
    with_user.put("/x", "1", None).await.unwrap();
    let root = Client::connect([&endpoint], ClientOptions::new().with_user("root", "rootpw")).await.unwrap();
    assert_eq!(root.get("/x").await.unwrap().as_deref(), Some(&b"1"[..]));

    // Roles limit what a user may touch; watches carry the token too.
    let alice =
        Client::connect([&endpoint], ClientOptions::new().with_user("alice", "alicepw")).await.unwrap();
    let mut watch = alice.watch("/app/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    alice.put("/app/k", "v", None).await.unwrap();
    let ev = common::within(Duration::from_secs(10), "alice's event", watch.next()).await.unwrap().unwrap();
    assert_eq!(ev.events[0].kv.key_str().unwrap(), "/app/k");
    let err = alice.put("/other", "v", None).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    let err = alice.watch("/other", None).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");

    // Tokens live 1 s here (refreshed by use). Take a fresh token by hand, leave both
    // unused until etcd rejects the fresh one: by then root's older token has expired too,
    // and the client must authenticate again by itself.
    let http = reqwest::Client::new();
    let reply: serde_json::Value = http
        .post(format!("{endpoint}/v3/auth/authenticate"))
        .body(r#"{"name":"root","password":"rootpw"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let probe_token = reply["token"].as_str().unwrap().to_string();
    // Using a token refreshes it, so this waits without touching either token.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let raw = http
        .post(format!("{endpoint}/v3/kv/range"))
        .header("authorization", &probe_token)
        .body("{\"key\":\"eA==\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401, "the probe token did not expire");
    assert_eq!(root.get("/x").await.unwrap().as_deref(), Some(&b"1"[..]));

    root.auth_disable().await.unwrap();
    assert_eq!(anonymous.get("/x").await.unwrap().as_deref(), Some(&b"1"[..]));
}
