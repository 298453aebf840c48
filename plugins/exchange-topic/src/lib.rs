//! The `topic` exchange type, matching RabbitMQ's trie semantics exactly.
//!
//! Keys are split on `.` into words the way `rabbit_db_topic_exchange:split_topic_key`
//! does: the empty key has zero words, every other key has one more word than it
//! has dots, and empty words are words (`"a."` is `["a", ""]`, `"."` is `["", ""]`).
//! In a binding key `*` matches exactly one word and `#` zero or more; in a
//! routing key they are ordinary words. Matching is case-sensitive.
//!
//! Bindings live in a trie keyed by word, so routing cost depends on the
//! routing key's length and the wildcard edges met, not on the binding count.

use std::collections::{HashMap, HashSet};

use warren_sdk::{BindingId, ExchangeType, FieldTable, Message};

/// Checks a topic binding key. RabbitMQ's `validate_binding/2` for topic accepts
/// every key (including `""`, `"a..b"`, `"#.#"`, `"**"`), so this always
/// succeeds; it exists so the broker has one place to hook stricter rules.
pub fn validate_binding_key(_binding_key: &str) -> Result<(), String> {
    Ok(())
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    bindings: Vec<BindingId>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.bindings.is_empty()
            && self.literal.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    fn has_children(&self) -> bool {
        !self.literal.is_empty() || self.star.is_some() || self.hash.is_some()
    }

    fn child_or_insert(&mut self, word: &str) -> &mut Node {
        match word {
            "*" => self.star.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            w => self.literal.entry(w.into()).or_default(),
        }
    }
}

/// Routing state of one topic exchange.
#[derive(Debug, Default)]
pub struct Topic {
    root: Node,
    // Unbind only receives the id; keep each binding's (normalised) path.
    path_of: HashMap<BindingId, Vec<Box<str>>>,
}

/// Splits a key into words exactly as RabbitMQ does (see module docs).
fn split_words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Binding-key words with runs of `#` collapsed: `#.#` matches exactly what `#`
/// matches, and collapsing keeps a hostile `#.#.#.#…` key from making routing
/// exponential.
fn normalise(binding_key: &str) -> Vec<Box<str>> {
    let mut words: Vec<Box<str>> = Vec::new();
    for w in split_words(binding_key) {
        if w == "#" && words.last().is_some_and(|prev| &**prev == "#") {
            continue;
        }
        words.push(w.into());
    }
    words
}

/// Returns whether `node` became empty, so the parent can prune it.
fn remove(node: &mut Node, path: &[Box<str>], id: BindingId) -> bool {
    match path.split_first() {
        None => node.bindings.retain(|b| *b != id),
        Some((word, rest)) => match &**word {
            "*" => {
                if node
                    .star
                    .as_deref_mut()
                    .is_some_and(|c| remove(c, rest, id))
                {
                    node.star = None;
                }
            }
            "#" => {
                if node
                    .hash
                    .as_deref_mut()
                    .is_some_and(|c| remove(c, rest, id))
                {
                    node.hash = None;
                }
            }
            w => {
                if node.literal.get_mut(w).is_some_and(|c| remove(c, rest, id)) {
                    node.literal.remove(w);
                }
            }
        },
    }
    node.is_empty()
}

/// A position in the routing key: `Some(byte offset)` of the next word, or
/// `None` once every word is consumed. Walking by offset avoids allocating a
/// word vector per message.
type Pos = Option<usize>;

fn next_word(key: &str, at: usize) -> (&str, Pos) {
    let rest = key.get(at..).unwrap_or("");
    match rest.find('.') {
        Some(dot) => (&rest[..dot], Some(at + dot + 1)),
        None => (rest, None),
    }
}

const END: usize = usize::MAX;
const LEAF: usize = usize::MAX - 1;

/// (hash node, position) pairs already expanded during one route. Several
/// `#` in one binding key can reach the same `#` node at the same position by
/// different paths; remembering them bounds the work to nodes × words. Most
/// routes touch at most a few `#` nodes, so a small inline array avoids
/// allocating on the hot path.
#[derive(Default)]
struct Seen {
    inline: [(usize, usize); 8],
    len: usize,
    spill: Option<HashSet<(usize, usize)>>,
}

impl Seen {
    fn first_visit(&mut self, node: &Node, pos: usize) -> bool {
        let key = (node as *const Node as usize, pos);
        if let Some(set) = &mut self.spill {
            return set.insert(key);
        }
        if self.inline[..self.len].contains(&key) {
            return false;
        }
        if self.len < self.inline.len() {
            self.inline[self.len] = key;
            self.len += 1;
        } else {
            let mut set: HashSet<_> = self.inline.iter().copied().collect();
            set.insert(key);
            self.spill = Some(set);
        }
        true
    }
}

fn walk(node: &Node, key: &str, pos: Pos, out: &mut Vec<BindingId>, seen: &mut Seen) {
    match pos {
        None => {
            out.extend_from_slice(&node.bindings);
            if let Some(h) = &node.hash {
                expand_hash(h, key, None, out, seen);
            }
        }
        Some(at) => {
            let (word, next) = next_word(key, at);
            if let Some(c) = node.literal.get(word) {
                walk(c, key, next, out, seen);
            }
            if let Some(c) = &node.star {
                walk(c, key, next, out, seen);
            }
            if let Some(h) = &node.hash {
                expand_hash(h, key, pos, out, seen);
            }
        }
    }
}

/// `h` is the node reached through a `#` edge: continue from every suffix of
/// the remaining words, including the empty one.
fn expand_hash(h: &Node, key: &str, mut pos: Pos, out: &mut Vec<BindingId>, seen: &mut Seen) {
    if !h.has_children() {
        // A trailing `#` swallows whatever is left, so skip walking each suffix.
        if seen.first_visit(h, LEAF) {
            out.extend_from_slice(&h.bindings);
        }
        return;
    }
    loop {
        if seen.first_visit(h, pos.unwrap_or(END)) {
            walk(h, key, pos, out, seen);
        }
        match pos {
            None => return,
            Some(at) => pos = next_word(key, at).1,
        }
    }
}

/// Sorts and deduplicates `out[start..]` in place, leaving `out[..start]` alone.
fn dedup_tail(out: &mut Vec<BindingId>, start: usize) {
    if out.len() - start < 2 {
        return;
    }
    out[start..].sort_unstable();
    let mut write = start + 1;
    for read in start + 1..out.len() {
        if out[read] != out[write - 1] {
            out[write] = out[read];
            write += 1;
        }
    }
    out.truncate(write);
}

impl ExchangeType for Topic {
    const SAME_KEY_SAME_ROUTE: bool = true;

    fn create(_arguments: &FieldTable) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn bind(
        &mut self,
        id: BindingId,
        binding_key: &str,
        _arguments: &FieldTable,
    ) -> Result<(), String> {
        validate_binding_key(binding_key)?;
        self.unbind(id);
        let path = normalise(binding_key);
        let mut node = &mut self.root;
        for word in &path {
            node = node.child_or_insert(word);
        }
        node.bindings.push(id);
        self.path_of.insert(id, path);
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        if let Some(path) = self.path_of.remove(&id) {
            remove(&mut self.root, &path, id);
        }
    }

    fn route(&self, message: &Message, out: &mut Vec<BindingId>) {
        let start = out.len();
        let key = message.routing_key.as_str();
        let pos = if key.is_empty() { None } else { Some(0) };
        let mut seen = Seen::default();
        walk(&self.root, key, pos, out, &mut seen);
        dedup_tail(out, start);
    }
}

warren_sdk::export_exchange_type!(Topic);

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: a seeded generator for the randomised test, so the crate
    /// needs no dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in `0..n` (the modulo bias is irrelevant for tiny `n`).
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn msg(key: &str) -> Message {
        Message {
            routing_key: key.into(),
            headers: vec![],
            properties: None,
        }
    }

    fn router(patterns: &[&str]) -> Topic {
        let mut r = Topic::default();
        for (i, p) in patterns.iter().enumerate() {
            r.bind(i as BindingId, p, &FieldTable::default()).unwrap();
        }
        r
    }

    fn route(r: &Topic, key: &str) -> Vec<BindingId> {
        let mut out = Vec::new();
        r.route(&msg(key), &mut out);
        out
    }

    fn matches(pattern: &str, key: &str) -> bool {
        route(&router(&[pattern]), key) == [0]
    }

    /// Straightforward recursive reading of the AMQP/RabbitMQ rules, used as
    /// an oracle for the trie.
    fn oracle(pattern: &[&str], words: &[&str]) -> bool {
        match pattern.split_first() {
            None => words.is_empty(),
            Some((&"#", rest)) => (0..=words.len()).any(|i| oracle(rest, &words[i..])),
            Some((&"*", rest)) => !words.is_empty() && oracle(rest, &words[1..]),
            Some((w, rest)) => words.first() == Some(w) && oracle(rest, &words[1..]),
        }
    }

    #[test]
    fn word_splitting_follows_rabbitmq() {
        assert_eq!(split_words(""), Vec::<&str>::new());
        assert_eq!(split_words("a"), ["a"]);
        assert_eq!(split_words("."), ["", ""]);
        assert_eq!(split_words("a."), ["a", ""]);
        assert_eq!(split_words(".a"), ["", "a"]);
        assert_eq!(split_words("a..b"), ["a", "", "b"]);
        assert_eq!(next_word("a.b", 0), ("a", Some(2)));
        assert_eq!(next_word("a.b", 2), ("b", None));
        assert_eq!(next_word("a.", 2), ("", None));
    }

    #[test]
    fn hash_alone_matches_everything() {
        for key in ["", "a", "a.b.c", ".", "..", "#", "*"] {
            assert!(matches("#", key), "{key:?}");
        }
    }

    #[test]
    fn empty_binding_key_matches_only_empty_routing_key() {
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        assert!(!matches("", "."));
    }

    #[test]
    fn star_is_exactly_one_word() {
        assert!(matches("*", "a"));
        assert!(!matches("*", ""));
        assert!(!matches("*", "a.b"));
        assert!(!matches("*", "."));
        assert!(matches("*.*", "."));
        assert!(!matches("*.a", "a"));
        assert!(matches("*.a", "b.a"));
        assert!(matches("*.a", ".a"));
        assert!(matches("a.*.b", "a..b"));
        assert!(matches("a.*", "a."));
        assert!(!matches("a.*", "a"));
    }

    #[test]
    fn hash_is_zero_or_more_words() {
        assert!(matches("a.#", "a"));
        assert!(matches("a.#", "a.b"));
        assert!(matches("a.#", "a.b.c"));
        assert!(!matches("a.#", "b.a"));
        assert!(!matches("a.#", ""));
        assert!(matches("#.a", "a"));
        assert!(matches("#.a", "x.y.a"));
        assert!(!matches("#.a", "a.b"));
        assert!(matches("a.#.b", "a.b"));
        assert!(matches("a.#.b", "a.x.y.b"));
        assert!(!matches("a.#.b", "a.x.y"));
        assert!(matches("#.*", "a"));
        assert!(!matches("#.*", ""));
        assert!(matches("*.#", "a"));
        assert!(!matches("*.#", ""));
    }

    #[test]
    fn star_then_hash() {
        assert!(!matches("a.*.#", "a"));
        assert!(matches("a.*.#", "a.b"));
        assert!(matches("a.*.#", "a.b.c.d"));
        assert!(!matches("a.*.#", "b.c"));
    }

    #[test]
    fn repeated_hashes() {
        assert!(matches("#.#", ""));
        assert!(matches("#.#", "a.b"));
        assert!(matches("a.#.#.b", "a.b"));
        assert!(matches("a.#.#.b", "a.x.b"));
        assert!(matches("#.#.#", "x"));
        assert_eq!(normalise("#.#.a.#.#"), normalise("#.a.#"));
    }

    #[test]
    fn empty_words_are_words() {
        assert!(matches("a.", "a."));
        assert!(!matches("a.", "a"));
        assert!(matches("a..b", "a..b"));
        assert!(!matches("a..b", "a.b"));
        assert!(matches(".", "."));
        assert!(!matches(".", ""));
    }

    #[test]
    fn wildcards_in_routing_key_are_literal_words() {
        assert!(matches("a.*", "a.*"));
        assert!(!matches("a.b", "a.*"));
        assert!(!matches("a.b", "a.#"));
        assert!(matches("a.b", "a.b"));
    }

    #[test]
    fn case_sensitive() {
        assert!(!matches("A.b", "a.b"));
    }

    #[test]
    fn each_binding_reported_once() {
        let r = router(&["#.a.#", "#.a.*.#", "#"]);
        let mut out = vec![42, 42];
        r.route(&msg("a.a.a.a"), &mut out);
        assert_eq!(out, [42, 42, 0, 1, 2], "existing entries untouched");
    }

    #[test]
    fn many_hashes_do_not_blow_up() {
        // Without memoising (# node, position) this is exponential.
        let pattern = ["#", "a"].repeat(20).join(".");
        let key = ["a"; 100].join(".");
        let r = router(&[&pattern, "#.b.#"]);
        let t = std::time::Instant::now();
        assert_eq!(route(&r, &key), [0]);
        assert!(t.elapsed().as_secs() < 5);
    }

    #[test]
    fn shared_prefixes_and_unbind_pruning() {
        let mut r = router(&["a.b", "a.*", "a.#", "a.b.c", "a.b"]);
        assert_eq!(route(&r, "a.b"), [0, 1, 2, 4]);
        assert_eq!(route(&r, "a.b.c"), [2, 3]);
        r.unbind(0);
        assert_eq!(route(&r, "a.b"), [1, 2, 4]);
        r.unbind(4);
        r.unbind(3);
        assert_eq!(route(&r, "a.b"), [1, 2]);
        r.unbind(1);
        r.unbind(2);
        r.unbind(2);
        assert!(route(&r, "a.b").is_empty());
        assert!(r.root.is_empty(), "trie pruned: {:?}", r.root);
        assert!(r.path_of.is_empty());
    }

    #[test]
    fn rebinding_an_id_moves_it() {
        let mut r = router(&["a.*"]);
        r.bind(0, "b.#", &FieldTable::default()).unwrap();
        assert!(route(&r, "a.x").is_empty());
        assert_eq!(route(&r, "b"), [0]);
        r.unbind(0);
        assert!(r.root.is_empty());
    }

    #[test]
    fn validate_accepts_anything() {
        for k in ["", "#", "a..b", "**", "#.#", "a.#*"] {
            assert!(validate_binding_key(k).is_ok());
        }
        // `**` and `a#` are literal words, not wildcards.
        assert!(matches("**", "**"));
        assert!(!matches("**", "a"));
        assert!(!matches("a#", "ab"));
    }

    #[test]
    fn trie_agrees_with_oracle_on_random_inputs() {
        let mut rng = Rng(0x7a11);
        let pattern_words = ["a", "b", "", "*", "#"];
        let key_words = ["a", "b", "", "*", "#"];
        let make_key = |rng: &mut Rng, alphabet: &[&str], max: usize| -> String {
            let n = rng.below(max + 1);
            (0..n)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect::<Vec<_>>()
                .join(".")
        };
        let patterns: Vec<String> = (0..300)
            .map(|_| make_key(&mut rng, &pattern_words, 5))
            .collect();
        let pattern_refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let mut r = router(&pattern_refs);
        // Unbind a third so pruning is exercised against the oracle too.
        for id in (0..300).step_by(3) {
            r.unbind(id);
        }
        let mut total = 0;
        for _ in 0..3000 {
            let key = make_key(&mut rng, &key_words, 6);
            let kw = split_words(&key);
            let want: Vec<BindingId> = (0..300u64)
                .filter(|id| id % 3 != 0)
                .filter(|id| oracle(&split_words(&patterns[*id as usize]), &kw))
                .collect();
            assert_eq!(route(&r, &key), want, "key {key:?}");
            total += want.len();
        }
        assert!(total > 3000, "oracle test too weak: {total} matches");
    }
}
