//! [`Env`]: a job's environment variables, as compact as a list and as ordered as a map.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A job's environment: variable names to values, sorted by name (byte order), each name
/// once. It reads and writes exactly as a `BTreeMap<String, String>` does (a JSON object in
/// name order; a repeated name keeps its last value), so specs stored or sent before it
/// existed read back the same; it only takes less memory. A 100,000-job graph has 100,000 of
/// them, mostly of a few variables: a BTreeMap puts even one pair in a 544-byte node, this
/// a vector of exactly the pairs (96 bytes for two).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Env(Vec<(String, String)>);

impl Env {
    pub fn new() -> Env {
        Env(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&String> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name` to `value`, in its place by name; the value it replaces, if any.
    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    /// Unsets `name`; its value, if it was set.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.find(name).ok().map(|i| self.0.remove(i).1)
    }

    /// The pairs in name order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.0.iter())
    }

    /// The names in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.0.iter().map(|(k, _)| k)
    }

    /// The values in the order of their names.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }

    /// `pairs` in name order with each name once (the last of a repeated name wins, as
    /// inserting them into a map one by one would do), in a vector of exactly their number.
    fn from_pairs(mut pairs: Vec<(String, String)>) -> Env {
        // Stable, so a repeated name's pairs stay in the order given.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        // `dedup_by` keeps the first of a run and passes it second: move the later value
        // into it, so the last one is what stays.
        pairs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        pairs.shrink_to_fit();
        Env(pairs)
    }
}

/// The pairs of an [`Env`] in name order, as `(&name, &value)` like a map's.
#[derive(Clone, Debug)]
pub struct Iter<'a>(std::slice::Iter<'a, (String, String)>);

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a String, &'a String);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(k, v)| (k, v))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Env {
    type Item = (&'a String, &'a String);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Env {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<(String, String)> for Env {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Env {
        Env::from_pairs(iter.into_iter().collect())
    }
}

impl Extend<(String, String)> for Env {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<const N: usize> From<[(String, String); N]> for Env {
    fn from(pairs: [(String, String); N]) -> Env {
        Env::from_pairs(pairs.into())
    }
}

impl From<BTreeMap<String, String>> for Env {
    fn from(map: BTreeMap<String, String>) -> Env {
        // Already sorted and unique.
        Env(map.into_iter().collect())
    }
}

impl From<Env> for BTreeMap<String, String> {
    fn from(env: Env) -> BTreeMap<String, String> {
        env.0.into_iter().collect()
    }
}

impl std::ops::Index<&str> for Env {
    type Output = String;

    /// The value of `name`; panics when it is not set, as a map's index does.
    fn index(&self, name: &str) -> &String {
        match self.get(name) {
            Some(v) => v,
            None => panic!("no variable {name:?} in the environment"),
        }
    }
}

impl Serialize for Env {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Env {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Env, D::Error> {
        struct EnvVisitor;

        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = Env;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Env, A::Error> {
                // Bounded as serde bounds its own preallocations: the hint is the input's.
                let mut pairs = Vec::with_capacity(access.size_hint().unwrap_or(0).min(4096));
                while let Some(pair) = access.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(Env::from_pairs(pairs))
            }
        }

        deserializer.deserialize_map(EnvVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn it_is_ordered_by_name_whatever_the_order_given() {
        let env: Env = pairs(&[("b", "2"), ("a", "1"), ("B", "3"), ("ab", "4")])
            .into_iter()
            .collect();
        let names: Vec<&String> = env.keys().collect();
        assert_eq!(names, ["B", "a", "ab", "b"]);
        assert_eq!(env.len(), 4);
        assert_eq!(env.get("ab").map(String::as_str), Some("4"));
        assert_eq!(env.get("c"), None);
        assert_eq!(env["b"], "2");
        assert!(env.contains_key("B") && !env.contains_key("A"));
    }

    #[test]
    fn a_repeated_name_keeps_its_last_value_as_a_map_does() {
        let given = pairs(&[("x", "1"), ("y", "2"), ("x", "3"), ("x", "4"), ("y", "5")]);
        let env: Env = given.clone().into_iter().collect();
        let map: BTreeMap<String, String> = given.into_iter().collect();
        assert_eq!(env, Env::from(map.clone()));
        assert_eq!(BTreeMap::from(env.clone()), map);
        assert_eq!(env["x"], "4");
        assert_eq!(env.len(), 2);
        // Exactly the pairs: no room kept for more.
        assert_eq!(env.0.capacity(), 2);
    }

    #[test]
    fn insert_and_remove_keep_the_order() {
        let mut env = Env::new();
        assert!(env.is_empty());
        assert_eq!(env.insert("m".into(), "1".into()), None);
        assert_eq!(env.insert("a".into(), "2".into()), None);
        assert_eq!(env.insert("z".into(), "3".into()), None);
        assert_eq!(env.insert("m".into(), "4".into()), Some("1".into()));
        let all: Vec<(&String, &String)> = env.iter().collect();
        assert_eq!(
            all,
            [
                (&"a".to_string(), &"2".to_string()),
                (&"m".to_string(), &"4".to_string()),
                (&"z".to_string(), &"3".to_string())
            ]
        );
        assert_eq!(env.remove("m"), Some("4".into()));
        assert_eq!(env.remove("m"), None);
        env.extend(pairs(&[("b", "5"), ("a", "6")]));
        let names: Vec<&String> = env.keys().collect();
        assert_eq!(names, ["a", "b", "z"]);
        assert_eq!(env.values().collect::<Vec<_>>(), ["6", "5", "3"]);
    }

    #[test]
    fn json_is_the_json_of_the_map() {
        let cases: [&[(&str, &str)]; 4] = [
            &[],
            &[("MOZ_CHUNK", "7"), ("MOZ_SUITE", "mochitest")],
            &[("z", ""), ("a", "\u{0}\n\"é"), ("Z", "1"), ("_", "2")],
            &[("k", "1"), ("k", "2")],
        ];
        for case in cases {
            let env: Env = pairs(case).into_iter().collect();
            let map: BTreeMap<String, String> = pairs(case).into_iter().collect();
            let json = serde_json::to_string(&env).unwrap();
            assert_eq!(json, serde_json::to_string(&map).unwrap());
            assert_eq!(
                serde_json::to_value(&env).unwrap(),
                serde_json::to_value(&map).unwrap()
            );
            // Read back, by itself and as the map it was.
            let back: Env = serde_json::from_str(&json).unwrap();
            assert_eq!(back, env);
            let as_map: BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
            assert_eq!(as_map, map);
        }
    }

    #[test]
    fn json_in_any_order_and_with_repeats_reads_as_the_map_reads_it() {
        for text in [
            r#"{}"#,
            r#"{"b": "1", "a": "2"}"#,
            r#"{"a": "1", "b": "2", "a": "3"}"#,
            r#"{"é": "x", "e": "y", "E": "z"}"#,
        ] {
            let env: Env = serde_json::from_str(text).unwrap();
            let map: BTreeMap<String, String> = serde_json::from_str(text).unwrap();
            assert_eq!(BTreeMap::from(env.clone()), map, "{text}");
            assert_eq!(
                serde_json::to_string(&env).unwrap(),
                serde_json::to_string(&map).unwrap()
            );
        }
    }

    #[test]
    fn what_a_map_refuses_it_refuses() {
        for text in [r#"{"a": 1}"#, r#"["a", "b"]"#, r#""a""#, r#"{"a": null}"#] {
            assert!(serde_json::from_str::<Env>(text).is_err(), "{text}");
            assert!(serde_json::from_str::<BTreeMap<String, String>>(text).is_err());
        }
    }
}
