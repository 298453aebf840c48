//! Who may connect and what they may do: passwords, vhost access, the configure/write/read
//! permission regexes, and guest's loopback-only rule — with RabbitMQ's codes and texts.

mod common;

use std::net::Ipv4Addr;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};

const LOGIN_REFUSED: &str = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.";

async fn connect_err(url: &str) -> lapin::Error {
    match Connection::connect(url, Default::default()).await {
        Ok(_) => panic!("connecting to {url} should fail"),
        Err(e) => e,
    }
}

/// A broker with user `name`/`pass` holding the given permissions on vhost `/`.
fn broker_with_user(name: &str, pass: &str, conf: &str, write: &str, read: &str) -> TestBroker {
    let broker = TestBroker::start();
    broker.ctl_ok(&["add_user", name, pass]);
    broker.ctl_ok(&["set_permissions", "-p", "/", name, conf, write, read]);
    broker
}

#[tokio::test]
async fn wrong_password_or_unknown_user_is_refused_with_403() {
    let broker = TestBroker::start();
    for (user, pass) in [("guest", "wrong"), ("nobody", "guest"), ("guest", "GUEST")] {
        let e = connect_err(&url_for(broker.port, user, pass, "/")).await;
        assert_eq!(code(&e), Some(403), "{user}/{pass}: {e:?}");
        assert_eq!(text(&e), LOGIN_REFUSED, "{user}/{pass}");
    }
    // The right password still works afterwards.
    connect(&broker.url()).await;
}

#[tokio::test]
async fn a_client_without_authentication_failure_close_just_sees_the_socket_close() {
    let broker = TestBroker::start();
    let port = broker.port;
    tokio::task::spawn_blocking(move || {
        let mut raw = Raw::tcp(port);
        raw.send(b"AMQP\x00\x00\x09\x01");
        raw.read_frame().expect("connection.start");
        // start-ok with empty client properties (so no capabilities) and a bad password.
        raw.send(&method_frame(
            0,
            10,
            11,
            Args::new()
                .empty_table()
                .short("PLAIN")
                .long(b"\0guest\0bad")
                .short("en_US"),
        ));
        assert!(
            raw.read_frame().is_none(),
            "expected the socket to close silently"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_user_without_permissions_on_the_vhost_gets_530() {
    let broker = TestBroker::start();
    broker.ctl_ok(&["add_user", "carol", "pw"]);
    broker.ctl_ok(&["add_vhost", "other"]);
    broker.ctl_ok(&["set_permissions", "-p", "other", "carol", ".*", ".*", ".*"]);
    let e = connect_err(&url_for(broker.port, "carol", "pw", "/")).await;
    assert_eq!(code(&e), Some(530), "{e:?}");
    assert_eq!(
        text(&e),
        "NOT_ALLOWED - access to vhost '/' refused for user 'carol'"
    );
    // Where she has permissions she gets in.
    connect(&url_for(broker.port, "carol", "pw", "other")).await;
    // A vhost that does not exist is refused the same way.
    let e = connect_err(&url_for(broker.port, "guest", "guest", "nowhere")).await;
    assert_eq!(code(&e), Some(530), "{e:?}");
    assert_eq!(text(&e), "NOT_ALLOWED - vhost nowhere not found");
    // Clearing permissions takes effect for new connections.
    broker.ctl_ok(&["clear_permissions", "-p", "other", "carol"]);
    let e = connect_err(&url_for(broker.port, "carol", "pw", "other")).await;
    assert_eq!(code(&e), Some(530), "{e:?}");
}

#[tokio::test]
async fn configure_permission_is_enforced_on_declare_and_delete() {
    let broker = broker_with_user("dave", "pw", "^dave-", ".*", ".*");
    let (_g, guest) = open(&broker.url()).await;
    declare(&guest, "guest-q", Default::default(), FieldTable::default()).await;
    let url = url_for(broker.port, "dave", "pw", "/");
    let (conn, ch) = open(&url).await;
    declare(&ch, "dave-q", Default::default(), FieldTable::default()).await;
    ch.exchange_declare(
        "dave-x".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let t = expect_code(
        ch.queue_declare("other-q".into(), Default::default(), FieldTable::default())
            .await,
        403,
    );
    assert_eq!(
        t,
        "ACCESS_REFUSED - configure access to queue 'other-q' in vhost '/' refused for user 'dave'"
    );
    let ch = conn.create_channel().await.unwrap();
    let t = expect_code(
        ch.exchange_declare(
            "other-x".into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        t,
        "ACCESS_REFUSED - configure access to exchange 'other-x' in vhost '/' refused for user 'dave'"
    );
    let ch = conn.create_channel().await.unwrap();
    let t = expect_code(
        ch.queue_delete("guest-q".into(), Default::default()).await,
        403,
    );
    assert_eq!(
        t,
        "ACCESS_REFUSED - configure access to queue 'guest-q' in vhost '/' refused for user 'dave'"
    );
    // A passive declare needs no configure permission.
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(ready_count(&ch, "guest-q").await, 0);
    assert!(conn.status().connected(), "403 is a channel error");
}

#[tokio::test]
async fn write_permission_is_enforced_on_publish_and_bind() {
    let broker = broker_with_user("eve", "pw", ".*", "^eve-", ".*");
    let (conn, ch) = open(&url_for(broker.port, "eve", "pw", "/")).await;
    declare(&ch, "eve-q", Default::default(), FieldTable::default()).await;
    ch.exchange_declare(
        "eve-x".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    // Binding eve-q to amq.fanout needs write on the queue and read on the exchange: both ok.
    ch.queue_bind(
        "eve-q".into(),
        "amq.fanout".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_confirmed(&ch, "eve-x", "", b"allowed", Default::default()).await;
    for (exchange, shown) in [("amq.fanout", "amq.fanout"), ("", "amq.default")] {
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        let r = ch
            .basic_publish(
                exchange.into(),
                "eve-q".into(),
                Default::default(),
                b"no",
                Default::default(),
            )
            .await
            .unwrap()
            .await;
        let t = expect_code(r, 403);
        assert_eq!(
            t,
            format!(
                "ACCESS_REFUSED - write access to exchange '{shown}' in vhost '/' refused for user 'eve'"
            )
        );
    }
    // Binding a queue eve may not write to is refused.
    let (_g, guest) = open(&broker.url()).await;
    declare(&guest, "guest-q", Default::default(), FieldTable::default()).await;
    let ch = conn.create_channel().await.unwrap();
    let t = expect_code(
        ch.queue_bind(
            "guest-q".into(),
            "amq.fanout".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        t,
        "ACCESS_REFUSED - write access to queue 'guest-q' in vhost '/' refused for user 'eve'"
    );
    // Nothing refused reached a queue.
    assert_eq!(ready_count(&guest, "guest-q").await, 0);
}

#[tokio::test]
async fn read_permission_is_enforced_on_consume_get_and_purge() {
    let broker = broker_with_user("frank", "pw", ".*", ".*", "^frank-");
    let (conn, ch) = open(&url_for(broker.port, "frank", "pw", "/")).await;
    for q in ["frank-q", "secret"] {
        declare(&ch, q, Default::default(), FieldTable::default()).await;
        publish(&ch, "", q, b"m", Default::default()).await;
    }
    let _c = consume(&ch, "frank-q", "mine", true).await;
    let t = expect_code(
        ch.basic_consume(
            "secret".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        t,
        "ACCESS_REFUSED - read access to queue 'secret' in vhost '/' refused for user 'frank'"
    );
    let ch = conn.create_channel().await.unwrap();
    expect_code(
        ch.basic_get("secret".into(), BasicGetOptions { no_ack: true })
            .await,
        403,
    );
    let ch = conn.create_channel().await.unwrap();
    expect_code(
        ch.queue_purge("secret".into(), Default::default()).await,
        403,
    );
    // Binding needs read on the exchange: amq.direct does not match ^frank-.
    let ch = conn.create_channel().await.unwrap();
    let t = expect_code(
        ch.queue_bind(
            "frank-q".into(),
            "amq.direct".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        t,
        "ACCESS_REFUSED - read access to exchange 'amq.direct' in vhost '/' refused for user 'frank'"
    );
    let (_g, guest) = open(&broker.url()).await;
    assert_eq!(
        ready_count(&guest, "secret").await,
        1,
        "the refused reads took nothing"
    );
}

#[tokio::test]
async fn permission_changes_apply_to_new_channels_at_once() {
    let broker = broker_with_user("gina", "pw", "^$", ".*", ".*");
    let (conn, ch) = open(&url_for(broker.port, "gina", "pw", "/")).await;
    expect_code(
        ch.queue_declare("later".into(), Default::default(), FieldTable::default())
            .await,
        403,
    );
    broker.ctl_ok(&["set_permissions", "gina", ".*", ".*", ".*"]);
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "later", Default::default(), FieldTable::default()).await;
}

/// The first IPv4 address of an interface that is up and not loopback.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    let mut out = None;
    unsafe {
        let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut addrs) != 0 {
            return None;
        }
        let mut cur = addrs;
        while !cur.is_null() {
            let ifa = &*cur;
            let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            if up && !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_unspecified() {
                    out = Some(ip);
                    break;
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(addrs);
    }
    out
}

#[tokio::test]
async fn guest_may_only_connect_from_loopback() {
    let broker = TestBroker::start_with_config("loopback_users.guest = true\n");
    broker.ctl_ok(&["add_user", "remote", "pw"]);
    broker.ctl_ok(&["set_permissions", "remote", ".*", ".*", ".*"]);
    // From loopback guest is fine.
    connect(&broker.url()).await;
    let Some(ip) = non_loopback_ipv4() else {
        println!(
            "NOTE: this machine has no non-loopback IPv4 address; the remote half of this test was skipped"
        );
        return;
    };
    // The address is reachable: another user gets in through it...
    connect(&format!("amqp://remote:pw@{ip}:{}/%2f", broker.port)).await;
    // ...but guest is refused, with the same text as a wrong password (RabbitMQ keeps the
    // reason for its log).
    let e = connect_err(&format!("amqp://guest:guest@{ip}:{}/%2f", broker.port)).await;
    assert_eq!(code(&e), Some(403), "{e:?}");
    assert_eq!(text(&e), LOGIN_REFUSED);
    let rows = ctl_rows(&broker, &["list_connections", "user", "peer_host"]);
    assert!(
        !rows
            .iter()
            .any(|r| r["user"] == "guest" && r["peer_host"] == ip.to_string()),
        "{rows:?}"
    );
}

#[tokio::test]
async fn loopback_users_none_lets_guest_in_from_anywhere() {
    let broker = TestBroker::start_with_config("loopback_users = none\n");
    let Some(ip) = non_loopback_ipv4() else {
        println!("NOTE: this machine has no non-loopback IPv4 address; test skipped");
        return;
    };
    let (_conn, ch) = open(&format!("amqp://guest:guest@{ip}:{}/%2f", broker.port)).await;
    declare(&ch, "from-afar", Default::default(), FieldTable::default()).await;
    let rows = ctl_rows(&broker, &["list_connections", "user", "peer_host"]);
    assert!(
        rows.iter()
            .any(|r| r["user"] == "guest" && r["peer_host"] == ip.to_string()),
        "{rows:?}"
    );
}

#[tokio::test]
async fn topic_permissions_restrict_the_routing_keys_of_publishes_and_binds() {
    let broker = broker_with_user("tom", "pw", ".*", ".*", ".*");
    let set = broker.ctl_ok(&[
        "set_topic_permissions",
        "tom",
        "amq.topic",
        "^{username}\\.",
        "^public\\.",
    ]);
    assert!(
        set.contains("Setting topic permissions on \"amq.topic\" for user \"tom\""),
        "{set}"
    );
    let rows = ctl_rows(&broker, &["list_topic_permissions"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["user"], "tom");
    assert_eq!(rows[0]["exchange"], "amq.topic");
    assert_eq!(rows[0]["write"], "^{username}\\.");
    assert_eq!(rows[0]["read"], "^public\\.");
    assert_eq!(
        ctl_rows(&broker, &["list_user_topic_permissions", "tom"])[0]["vhost"],
        "/"
    );

    let (conn, ch) = open(&url_for(broker.port, "tom", "pw", "/")).await;
    declare(&ch, "tom-q", Default::default(), FieldTable::default()).await;
    ch.queue_bind(
        "tom-q".into(),
        "amq.topic".into(),
        "public.#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .expect("a binding key the read pattern allows");
    ch.confirm_select(Default::default()).await.unwrap();
    // {username} stands for the user: tom may publish under "tom.".
    publish_confirmed(&ch, "amq.topic", "tom.news", b"mine", Default::default()).await;
    // Other topic exchanges and other exchange types are not restricted.
    publish_confirmed(&ch, "amq.direct", "anything", b"ok", Default::default()).await;

    let ch2 = conn.create_channel().await.unwrap();
    let refused = ch2
        .basic_publish(
            "amq.topic".into(),
            "alice.news".into(),
            Default::default(),
            b"not mine",
            Default::default(),
        )
        .await;
    let text = match refused {
        Err(e) => expect_code::<()>(Err(e), 403),
        Ok(_) => {
            // The refusal closes the channel after the frame was sent.
            let e = ch2
                .queue_declare(
                    "tom-q".into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect_err("the channel was closed");
            expect_code::<()>(Err(e), 403)
        }
    };
    assert!(
        text.contains(
            "write access to topic 'alice.news' in exchange 'amq.topic' in vhost '/' refused for user 'tom'"
        ),
        "{text}"
    );
    let ch3 = conn.create_channel().await.unwrap();
    let text = expect_code(
        ch3.queue_bind(
            "tom-q".into(),
            "amq.topic".into(),
            "private.#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert!(
        text.contains("read access to topic 'private.#' in exchange 'amq.topic'"),
        "{text}"
    );

    // Cleared: every key again, at once on new channels.
    broker.ctl_ok(&["clear_topic_permissions", "tom", "amq.topic"]);
    assert!(ctl_rows(&broker, &["list_topic_permissions"]).is_empty());
    let ch4 = conn.create_channel().await.unwrap();
    ch4.confirm_select(Default::default()).await.unwrap();
    publish_confirmed(
        &ch4,
        "amq.topic",
        "alice.news",
        b"now allowed",
        Default::default(),
    )
    .await;
}
