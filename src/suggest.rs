//! "did you mean `x`?" for a name the user typed (an environment, a stage,
//! a stage kind, a model, a key): one rule everywhere, so a typo is caught
//! the same way in the pipeline file and on the command line.

/// The closest candidate to `word`, if one is close enough to be a typo:
/// case-insensitive Damerau-Levenshtein distance at most a third of the
/// word's length (and at least 2).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&lower, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "did you mean `x`?" for the closest candidate, if one is close enough.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// What to tell a user who named `word` where `candidates` are the choices:
/// "did you mean `x`?" for a close one, else the list (or "none").
pub fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str> + Clone) -> String {
    did_you_mean(word, candidates.clone()).unwrap_or_else(|| {
        let all: Vec<String> = candidates.into_iter().map(|c| format!("`{c}`")).collect();
        if all.is_empty() { "there are none".to_string() } else { format!("one of {}", all.join(", ")) }
    })
}

/// "no WHAT `name` in PLACE; did you mean `x`?" (or "; WHATs: a, b"):
/// the one wording for a name that is not there.
pub fn not_found<'a>(
    what: &str,
    name: &str,
    place: &str,
    candidates: impl IntoIterator<Item = &'a str> + Clone,
) -> String {
    let tail = did_you_mean(name, candidates.clone()).unwrap_or_else(|| {
        let all: Vec<&str> = candidates.into_iter().collect();
        if all.is_empty() { format!("it has no {what}s") } else { format!("{what}s: {}", all.join(", ")) }
    });
    format!("no {what} `{name}` in {place}; {tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_far_ones_are_not() {
        assert_eq!(closest("prdo", ["dev", "prod"]), Some("prod"));
        assert_eq!(closest("rendr", ["fetch", "render", "build"]), Some("render"));
        assert_eq!(closest("Render", ["render"]), Some("render"));
        assert_eq!(closest("kubernetes", ["dev", "prod"]), None);
        assert_eq!(did_you_mean("dve", ["dev"]), Some("did you mean `dev`?".into()));
    }

    #[test]
    fn without_a_close_one_the_hint_lists_the_choices() {
        assert_eq!(hint("staging", ["dev", "prod"]), "one of `dev`, `prod`");
        assert_eq!(hint("prdo", ["dev", "prod"]), "did you mean `prod`?");
        assert_eq!(hint("x", std::iter::empty::<&str>()), "there are none");
    }

    #[test]
    fn not_found_names_the_place_and_a_guess_or_the_list() {
        assert_eq!(
            not_found("environment", "prdo", "p.yaml", ["dev", "prod"]),
            "no environment `prdo` in p.yaml; did you mean `prod`?"
        );
        assert_eq!(
            not_found("environment", "staging", "p.yaml", ["dev", "prod"]),
            "no environment `staging` in p.yaml; environments: dev, prod"
        );
        assert_eq!(not_found("stage", "x", "p.yaml", []), "no stage `x` in p.yaml; it has no stages");
    }
}
