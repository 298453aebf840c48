//! The `x-misbehave` exchange type, for Warren's plugin isolation tests only.
//!
//! It routes every message to every binding, like fanout, except that a
//! message's routing key can make it misbehave inside the host's sandbox:
//!
//! * `trap`: panics (a trap, since plugins build with `panic = "abort"`);
//! * `loop`: spins forever, to trip the host's deadline;
//! * `bomb`: allocates and touches memory until the host's memory cap stops it.
//!
//! Declaring with the argument `x-fail-create` (any value) makes create fail.

use std::hint::black_box;

use warren_sdk::{BindingId, ExchangeType, FieldTable, Message};

/// Routing state of one misbehaving exchange.
#[derive(Debug, Default)]
pub struct Misbehave {
    ids: Vec<BindingId>,
}

impl ExchangeType for Misbehave {
    fn create(arguments: &FieldTable) -> Result<Self, String> {
        if warren_sdk::field(arguments, "x-fail-create").is_some() {
            return Err("misbehave: create refused".into());
        }
        Ok(Self::default())
    }

    fn bind(
        &mut self,
        id: BindingId,
        _binding_key: &str,
        _arguments: &FieldTable,
    ) -> Result<(), String> {
        if !self.ids.contains(&id) {
            self.ids.push(id);
        }
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        self.ids.retain(|b| *b != id);
    }

    fn route(&self, message: &Message, out: &mut Vec<BindingId>) {
        match message.routing_key.as_str() {
            "trap" => panic!("misbehave: trap requested"),
            "loop" => spin(),
            "bomb" => bomb(),
            _ => out.extend_from_slice(&self.ids),
        }
    }
}

/// Never returns. `black_box` keeps the optimiser from proving the loop
/// side-effect free (an infinite loop without side effects is otherwise fair
/// game for it).
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Never returns: grows the heap by 1 MiB at a time and writes every page,
/// so the memory is really used, not just reserved.
fn bomb() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let chunk = vec![0xa5u8; 1 << 20];
        hoard.push(black_box(chunk));
        black_box(&mut hoard);
    }
}

warren_sdk::export_exchange_type!(Misbehave);

#[cfg(test)]
mod tests {
    use super::*;
    use warren_sdk::FieldValue;

    fn route(x: &Misbehave, key: &str) -> Vec<BindingId> {
        let mut out = Vec::new();
        x.route(
            &Message {
                routing_key: key.into(),
                headers: vec![],
                properties: None,
            },
            &mut out,
        );
        out
    }

    #[test]
    fn routes_everything_to_every_binding() {
        let mut x = Misbehave::create(&vec![]).unwrap();
        assert!(route(&x, "k").is_empty());
        x.bind(1, "a", &vec![]).unwrap();
        x.bind(2, "b", &vec![]).unwrap();
        x.bind(1, "c", &vec![]).unwrap();
        assert_eq!(route(&x, "k"), [1, 2]);
        assert_eq!(route(&x, "Trap"), [1, 2]);
        x.unbind(1);
        x.unbind(7);
        assert_eq!(route(&x, ""), [2]);
    }

    #[test]
    fn fail_create_argument_refuses() {
        for v in [FieldValue::Void, FieldValue::Boolean(false)] {
            let err = Misbehave::create(&vec![("x-fail-create".into(), v)]).unwrap_err();
            assert_eq!(err, "misbehave: create refused");
        }
        assert!(Misbehave::create(&vec![("x-other".into(), FieldValue::Void)]).is_ok());
    }

    #[test]
    #[should_panic(expected = "misbehave: trap requested")]
    fn trap_panics() {
        route(&Misbehave::default(), "trap");
    }

    // `loop` and `bomb` never return; the host's isolation tests run them
    // under its deadline and memory cap.
}
