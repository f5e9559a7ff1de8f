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
/// them, mostly of a few variables: a BTreeMap puts even one pair in a 544-byte node, and a
/// vector of string pairs makes an allocation of each string; this is one allocation of the
/// pairs' text, `{length}:{name}{length}:{value}` after each other (lengths in bytes).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Env(Box<str>);

impl Env {
    pub fn new() -> Env {
        Env::default()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets `name` to `value`, in its place by name; the value it replaces, if any.
    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        let old = self.get(&name).map(str::to_string);
        let mut pairs: Vec<(&str, &str)> = self.iter().filter(|(k, _)| *k != name).collect();
        let at = pairs.partition_point(|(k, _)| *k < name.as_str());
        pairs.insert(at, (&name, &value));
        let env = Env::encode(&pairs);
        *self = env;
        old
    }

    /// Unsets `name`; its value, if it was set.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let old = self.get(name)?.to_string();
        let pairs: Vec<(&str, &str)> = self.iter().filter(|(k, _)| *k != name).collect();
        *self = Env::encode(&pairs);
        Some(old)
    }

    /// The pairs in name order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(&self.0)
    }

    /// The names in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }

    /// The values in the order of their names.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(_, v)| v)
    }

    /// Pairs already in name order, each name once.
    fn encode(pairs: &[(&str, &str)]) -> Env {
        use std::fmt::Write;
        let digits = |n: usize| n.checked_ilog10().unwrap_or(0) as usize + 1;
        let size = pairs
            .iter()
            .map(|(k, v)| digits(k.len()) + k.len() + digits(v.len()) + v.len() + 2)
            .sum();
        let mut text = String::with_capacity(size);
        for (k, v) in pairs {
            // Writing to a String cannot fail.
            let _ = write!(text, "{}:{k}{}:{v}", k.len(), v.len());
        }
        Env(text.into_boxed_str())
    }

    /// `pairs` in name order with each name once (the last of a repeated name wins, as
    /// inserting them into a map one by one would do).
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
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Env::encode(&pairs)
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The pairs of an [`Env`] in name order, as `(name, value)`.
#[derive(Clone, Debug)]
pub struct Iter<'a>(&'a str);

impl<'a> Iter<'a> {
    /// The next `{length}:{text}` of the encoding; `None` at its end (or were it not one of
    /// `Env::encode`'s, which it always is).
    fn field(&mut self) -> Option<&'a str> {
        let (len, rest) = self.0.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let field = rest.get(..len)?;
        self.0 = &rest[len..];
        Some(field)
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let name = self.field()?;
        let value = self.field()?;
        Some((name, value))
    }
}

impl<'a> IntoIterator for &'a Env {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Env {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        let pairs: Vec<(String, String)> = self
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pairs.into_iter()
    }
}

impl FromIterator<(String, String)> for Env {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Env {
        Env::from_pairs(iter.into_iter().collect())
    }
}

impl Extend<(String, String)> for Env {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, iter: I) {
        let mut pairs: Vec<(String, String)> = std::mem::take(self).into_iter().collect();
        pairs.extend(iter);
        *self = Env::from_pairs(pairs);
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
        let pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Env::encode(&pairs)
    }
}

impl From<Env> for BTreeMap<String, String> {
    fn from(env: Env) -> BTreeMap<String, String> {
        env.into_iter().collect()
    }
}

impl std::ops::Index<&str> for Env {
    type Output = str;

    /// The value of `name`; panics when it is not set, as a map's index does.
    fn index(&self, name: &str) -> &str {
        match self.get(name) {
            Some(v) => v,
            None => panic!("no variable {name:?} in the environment"),
        }
    }
}

impl Serialize for Env {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self {
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
        let names: Vec<&str> = env.keys().collect();
        assert_eq!(names, ["B", "a", "ab", "b"]);
        assert_eq!(env.len(), 4);
        assert_eq!(env.get("ab"), Some("4"));
        assert_eq!(env.get("c"), None);
        assert_eq!(&env["b"], "2");
        assert!(env.contains_key("B") && !env.contains_key("A"));
    }

    #[test]
    fn a_repeated_name_keeps_its_last_value_as_a_map_does() {
        let given = pairs(&[("x", "1"), ("y", "2"), ("x", "3"), ("x", "4"), ("y", "5")]);
        let env: Env = given.clone().into_iter().collect();
        let map: BTreeMap<String, String> = given.into_iter().collect();
        assert_eq!(env, Env::from(map.clone()));
        assert_eq!(BTreeMap::from(env.clone()), map);
        assert_eq!(&env["x"], "4");
        assert_eq!(env.len(), 2);
        // One string of exactly the pairs.
        assert_eq!(&*env.0, "1:x1:41:y1:5");
    }

    #[test]
    fn insert_and_remove_keep_the_order() {
        let mut env = Env::new();
        assert!(env.is_empty());
        assert_eq!(env.insert("m".into(), "1".into()), None);
        assert_eq!(env.insert("a".into(), "2".into()), None);
        assert_eq!(env.insert("z".into(), "3".into()), None);
        assert_eq!(env.insert("m".into(), "4".into()), Some("1".into()));
        let all: Vec<(&str, &str)> = env.iter().collect();
        assert_eq!(all, [("a", "2"), ("m", "4"), ("z", "3")]);
        assert_eq!(env.remove("m"), Some("4".into()));
        assert_eq!(env.remove("m"), None);
        env.extend(pairs(&[("b", "5"), ("a", "6")]));
        let names: Vec<&str> = env.keys().collect();
        assert_eq!(names, ["a", "b", "z"]);
        assert_eq!(env.values().collect::<Vec<_>>(), ["6", "5", "3"]);
        assert_eq!(env.len(), 3);
    }

    #[test]
    fn any_names_and_values_read_back_as_given() {
        // Digits, colons, empty strings and long values: the lengths delimit, not the text.
        let given = pairs(&[
            ("", ""),
            ("1:", "2:3"),
            (":", ""),
            ("k", &"v:".repeat(1000)),
            ("é∑😀", "10:x"),
        ]);
        let env: Env = given.clone().into_iter().collect();
        let map: BTreeMap<String, String> = given.into_iter().collect();
        assert_eq!(BTreeMap::from(env.clone()), map);
        assert_eq!(env.len(), 5);
        assert_eq!(env.get("1:"), Some("2:3"));
        assert_eq!(env.get(""), Some(""));
        assert_eq!(format!("{env:?}"), format!("{map:?}"));
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
