//! A shopper's words: parsed once into a bounded [`SearchQuery`], then analysed exactly like
//! the documents (so "running" meets "run") and turned into a tantivy query that is scoped to
//! one store by construction.

use tantivy::Term;
use tantivy::query::{BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::tokenizer::TextAnalyzer;

use crate::error::{Result, SearchError};
use crate::index::Fields;

/// Longest query searched, in characters; the API refuses longer ones before this.
pub const MAX_QUERY_CHARS: usize = 100;
/// Words searched at most; the rest are ignored (every word costs up to four term lookups).
pub const MAX_TERMS: usize = 8;

/// Title matches count this much more than description matches.
const TITLE_BOOST: f32 = 3.0;
/// Exact (or stemmed) matches count this much more than typo-tolerant ones.
const EXACT_BOOST: f32 = 2.0;
const FUZZY_BOOST: f32 = 0.5;

/// What a shopper asked for: trimmed, at most [`MAX_QUERY_CHARS`] characters, not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery(String);

impl SearchQuery {
    pub fn parse(raw: &str) -> Result<SearchQuery> {
        let cut: String = raw.trim().chars().take(MAX_QUERY_CHARS).collect();
        let cut = cut.trim();
        if cut.is_empty() {
            return Err(SearchError::Query("is empty".into()));
        }
        Ok(SearchQuery(cut.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Typo tolerance by word length: short words have too many neighbours to guess at.
pub(crate) fn edit_distance(word_chars: usize) -> u8 {
    match word_chars {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    }
}

/// The query's words as the index stores them (lowercased, folded, stemmed, stop words
/// dropped), each with the length of the word the shopper typed.
pub(crate) fn analyse(analyzer: &mut TextAnalyzer, q: &SearchQuery) -> Vec<(String, usize)> {
    let text = q.as_str();
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while let Some(token) = stream.next() {
        let typed = text.get(token.offset_from..token.offset_to).map_or(token.text.len(), |w| w.chars().count());
        if !out.iter().any(|(t, _): &(String, usize)| *t == token.text) {
            out.push((token.text.clone(), typed));
        }
        if out.len() == MAX_TERMS {
            break;
        }
    }
    out
}

/// Every word must match the title or the description, exactly/stemmed or within its edit
/// distance; the store (and the other filters) are MUST clauses, so no scoring can reach
/// another store's documents.
pub(crate) fn build(fields: &Fields, words: &[(String, usize)], filters: Vec<Term>) -> Box<dyn Query> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = filters
        .into_iter()
        .map(|t| (Occur::Must, Box::new(TermQuery::new(t, IndexRecordOption::Basic)) as Box<dyn Query>))
        .collect();
    for (word, typed) in words {
        let mut either: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (field, boost) in [(fields.title, TITLE_BOOST), (fields.description, 1.0)] {
            let term = Term::from_field_text(field, word);
            either.push((
                Occur::Should,
                Box::new(BoostQuery::new(
                    Box::new(TermQuery::new(term.clone(), IndexRecordOption::WithFreqs)),
                    boost * EXACT_BOOST,
                )),
            ));
            let distance = edit_distance(*typed);
            if distance > 0 {
                either.push((
                    Occur::Should,
                    Box::new(BoostQuery::new(Box::new(FuzzyTermQuery::new(term, distance, true)), boost * FUZZY_BOOST)),
                ));
            }
        }
        clauses.push((Occur::Must, Box::new(BooleanQuery::new(either))));
    }
    Box::new(BooleanQuery::new(clauses))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_trimmed_bounded_and_never_empty() {
        assert!(SearchQuery::parse("   ").is_err());
        assert_eq!(SearchQuery::parse("  chai ").unwrap().as_str(), "chai");
        assert_eq!(SearchQuery::parse(&"x".repeat(500)).unwrap().as_str().len(), MAX_QUERY_CHARS);
    }

    #[test]
    fn typo_tolerance_grows_with_word_length() {
        assert_eq!(edit_distance(3), 0);
        assert_eq!(edit_distance(4), 1);
        assert_eq!(edit_distance(7), 1);
        assert_eq!(edit_distance(8), 2);
    }

    #[test]
    fn query_words_are_stemmed_deduplicated_and_capped() {
        let mut a = crate::index::analyzer();
        let words = analyse(&mut a, &SearchQuery::parse("Running shoes for the RUNNING").unwrap());
        let stems: Vec<&str> = words.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(stems, ["run", "shoe"]);
        assert_eq!(words[0].1, 7, "the typed word's length decides the typo tolerance");
        let many = (0..20).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
        assert_eq!(analyse(&mut a, &SearchQuery::parse(&many).unwrap()).len(), MAX_TERMS);
    }
}
