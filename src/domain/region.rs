//! The region tree (province → city → district → street) and what a user's regions let it see.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use super::care::valid_resident_id;

/// One region.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Region {
    /// Id chosen by the centre (the resident id alphabet: `[A-Za-z0-9_.:-]{1,64}`).
    pub id: String,
    /// Display name (广州市越秀区).
    pub name: String,
    /// The region above, `None` for a root.
    pub parent: Option<String>,
}

/// Whether `id` is a valid region id.
pub fn valid_region_id(id: &str) -> bool {
    valid_resident_id(id)
}

/// Every region and its parent, to answer "what lies below".
#[derive(Debug, Clone, Default)]
pub struct RegionTree {
    regions: HashMap<String, Region>,
    children: HashMap<String, Vec<String>>,
}

impl RegionTree {
    /// The tree of `regions` (a parent that is missing makes its child a root).
    pub fn new(regions: impl IntoIterator<Item = Region>) -> RegionTree {
        let mut t = RegionTree::default();
        for r in regions {
            t.regions.insert(r.id.clone(), r);
        }
        t.index();
        t
    }

    fn index(&mut self) {
        self.children.clear();
        for r in self.regions.values() {
            if let Some(p) = &r.parent {
                self.children
                    .entry(p.clone())
                    .or_default()
                    .push(r.id.clone());
            }
        }
    }

    /// A region.
    pub fn get(&self, id: &str) -> Option<&Region> {
        self.regions.get(id)
    }

    /// Every region, by id.
    pub fn all(&self) -> Vec<Region> {
        let mut out: Vec<Region> = self.regions.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Whether putting `id` under `parent` would make a cycle (a region below itself).
    pub fn would_cycle(&self, id: &str, parent: &str) -> bool {
        let mut at = Some(parent);
        let mut steps = 0;
        while let Some(p) = at {
            if p == id {
                return true;
            }
            steps += 1;
            if steps > self.regions.len() + 1 {
                return true;
            }
            at = self.regions.get(p).and_then(|r| r.parent.as_deref());
        }
        false
    }

    /// Adds or replaces a region (checked by the caller for a known parent and no cycle).
    pub fn put(&mut self, r: Region) {
        self.regions.insert(r.id.clone(), r);
        self.index();
    }

    /// `roots` and every region below them. A root not in the tree is kept as a region of
    /// its own (residents may name a region before the tree has it).
    pub fn below(&self, roots: &[String]) -> HashSet<String> {
        let mut out = HashSet::new();
        let mut stack: Vec<&str> = roots.iter().map(String::as_str).collect();
        while let Some(r) = stack.pop() {
            if out.insert(r.to_owned())
                && let Some(kids) = self.children.get(r)
            {
                stack.extend(kids.iter().map(String::as_str));
            }
        }
        out
    }
}

/// What a caller may see and touch.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Everything: admins and the bootstrap token.
    All,
    /// The regions assigned to the user and everything below them. Whatever belongs to no
    /// region (a device not assigned to a resident, the engine's own alerts) is outside.
    Regions(Arc<HashSet<String>>),
}

impl Scope {
    /// Whether something in `region` is visible.
    pub fn sees(&self, region: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Regions(set) => set.contains(region),
        }
    }

    /// Whether something of region `region` (`None`: belonging to no region) is visible.
    pub fn sees_opt(&self, region: Option<&str>) -> bool {
        match region {
            Some(r) => self.sees(r),
            None => matches!(self, Scope::All),
        }
    }

    /// The visible regions, sorted; `None` for every region.
    pub fn regions(&self) -> Option<Vec<String>> {
        match self {
            Scope::All => None,
            Scope::Regions(set) => {
                let mut v: Vec<String> = set.iter().cloned().collect();
                v.sort();
                Some(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, parent: Option<&str>) -> Region {
        Region {
            id: id.into(),
            name: id.into(),
            parent: parent.map(Into::into),
        }
    }

    #[test]
    fn a_region_sees_what_lies_below_it_only() {
        let t = RegionTree::new([
            r("gd", None),
            r("gz", Some("gd")),
            r("yx", Some("gz")),
            r("th", Some("gz")),
            r("sz", Some("gd")),
        ]);
        let s = t.below(&["gz".into()]);
        assert!(s.contains("gz") && s.contains("yx") && s.contains("th"));
        assert!(!s.contains("gd") && !s.contains("sz"));
        assert_eq!(t.below(&["gd".into()]).len(), 5);
        assert_eq!(t.below(&["elsewhere".into()]).len(), 1);
        assert!(t.would_cycle("gd", "yx"));
        assert!(t.would_cycle("gz", "gz"));
        assert!(!t.would_cycle("sz", "yx"));
        let scope = Scope::Regions(Arc::new(s));
        assert!(scope.sees("yx") && !scope.sees("sz"));
        assert!(!scope.sees_opt(None) && Scope::All.sees_opt(None));
    }
}
