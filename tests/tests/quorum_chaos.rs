//! Durable queues under fault injection: a three-node cluster, a confirming publisher and an
//! acking consumer, three cycles of SIGKILL and restart (the leader, then the next node in
//! turn, then the leader again), for a quorum queue and for a classic durable queue (whose
//! "leader" is its owner). No message the broker confirmed may be lost.
//! `warren-chaos` (tests/src/bin) runs the same checker for longer.

use warren_tests::chaos::{self, ChaosConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmed_messages_survive_killed_nodes() {
    check(ChaosConfig::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmed_messages_of_a_classic_queue_survive_its_owner_killed() {
    check(ChaosConfig {
        classic: true,
        ..ChaosConfig::default()
    })
    .await;
}

/// One run at a time: six nodes on two cores would test the machine, not the broker.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn check(cfg: ChaosConfig) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let report = chaos::run(&cfg).await.expect("chaos run");
    println!("{}", report.summary());
    for e in &report.events {
        println!("  {e}");
    }
    assert!(
        report.lost().is_empty(),
        "{} confirmed messages were never delivered, the first: {:?}\n{}",
        report.lost().len(),
        &report.lost()[..report.lost().len().min(20)],
        report.summary()
    );
    assert!(
        report.confirmed > 100,
        "too few confirms to mean anything: {}",
        report.summary()
    );
    assert_eq!(
        report.cycles, cfg.cycles,
        "not every kill/restart cycle ran: {:?} {:?}",
        report.events, report.errors
    );
}
