//! Storefront themes: the default theme (built in) and merchant-edited templates.
//!
//! A merchant may override any of the storefront templates. Their templates run in a sandbox:
//! minijinja has no file, network or process access unless given one (it is not), each render
//! has a fuel budget (bounded CPU) and a recursion limit, and output is capped. A template is
//! stored only after it compiled and rendered sample pages, so what is stored is always the last
//! good version; if a stored template still fails on a real page, that page is rendered with the
//! default theme and the failure logged — shoppers never see a broken page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::response::Html;
use minijinja::Environment;
use minijinja::value::{Serde, Value};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::WebError;
use crate::render::{self, Pages};

/// Templates a merchant may override, by the name they edit.
pub const EDITABLE: &[&str] = &[
    "layout.html",
    "home.html",
    "category.html",
    "product.html",
    "search.html",
    "cart.html",
    "checkout.html",
    "order.html",
];

/// The default theme, compiled into the binary.
pub static DEFAULT_THEME: &[(&str, &str)] = &[
    ("storefront/layout.html", include_str!("../templates/storefront/layout.html")),
    ("storefront/home.html", include_str!("../templates/storefront/home.html")),
    ("storefront/category.html", include_str!("../templates/storefront/category.html")),
    ("storefront/product.html", include_str!("../templates/storefront/product.html")),
    ("storefront/search.html", include_str!("../templates/storefront/search.html")),
    ("storefront/cart.html", include_str!("../templates/storefront/cart.html")),
    ("storefront/checkout.html", include_str!("../templates/storefront/checkout.html")),
    ("storefront/order.html", include_str!("../templates/storefront/order.html")),
    ("storefront/cards.html", include_str!("../templates/storefront/cards.html")),
];

/// Steps a merchant template may take per page (a default-theme page takes a few thousand).
pub const FUEL: u64 = 200_000;
/// Largest page a merchant template may produce.
pub const MAX_OUTPUT: usize = 1024 * 1024;
/// Largest template source a merchant may save.
pub const MAX_SOURCE: usize = 64 * 1024;

/// Compiled merchant themes, keyed by a hash of their overrides (so an edit is a new key).
pub struct Themes {
    compiled: Mutex<HashMap<[u8; 32], Arc<Environment<'static>>>>,
}

impl Default for Themes {
    fn default() -> Self {
        Self::new()
    }
}

fn key(overrides: &[(String, String)]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (name, source) in overrides {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(source.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// Builds a sandboxed environment: the default theme with `overrides` on top.
pub fn compile(overrides: &[(String, String)]) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    render::configure(&mut env);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(32);
    for (name, source) in DEFAULT_THEME {
        env.add_template(name, source).map_err(|e| render::describe(&e))?;
    }
    for (name, source) in overrides {
        if !EDITABLE.contains(&name.as_str()) {
            return Err(format!("{name}: not a template of the theme (editable: {})", EDITABLE.join(", ")));
        }
        if source.len() > MAX_SOURCE {
            return Err(format!("{name}: longer than {MAX_SOURCE} bytes"));
        }
        env.add_template_owned(format!("storefront/{name}"), source.clone()).map_err(|e| render::describe(&e))?;
    }
    Ok(env)
}

fn render_in(env: &Environment<'_>, name: &str, ctx: &Value) -> Result<String, String> {
    let tmpl = env.get_template(&format!("storefront/{name}")).map_err(|e| render::describe(&e))?;
    let out = tmpl.render(ctx.clone()).map_err(|e| render::describe(&e))?;
    if out.len() > MAX_OUTPUT {
        return Err(format!("{name}: the page is larger than {} KiB", MAX_OUTPUT / 1024));
    }
    Ok(out)
}

impl Themes {
    pub fn new() -> Self {
        Themes { compiled: Mutex::new(HashMap::new()) }
    }

    fn env_for(&self, overrides: &[(String, String)]) -> Result<Arc<Environment<'static>>, String> {
        let k = key(overrides);
        if let Some(env) = self.compiled.lock().unwrap_or_else(|p| p.into_inner()).get(&k) {
            return Ok(env.clone());
        }
        let env = Arc::new(compile(overrides)?);
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: themes are small, but a million stores must not mean a million entries.
        if cache.len() >= 512 {
            cache.clear();
        }
        cache.insert(k, env.clone());
        Ok(env)
    }

    /// Renders a storefront page (`name` is the short name, e.g. `product.html`) with the
    /// store's theme, falling back to the default theme if the merchant's fails.
    pub fn render(
        &self,
        pages: &Pages,
        overrides: &[(String, String)],
        name: &str,
        ctx: impl Serialize,
    ) -> Result<Html<String>, WebError> {
        let ctx = Value::from(Serde(&ctx));
        if !overrides.is_empty() {
            match self.env_for(overrides).and_then(|env| render_in(&env, name, &ctx)) {
                Ok(html) => return Ok(Html(html)),
                Err(e) => {
                    tracing::warn!(template = name, error = %e, "merchant template failed; serving the default theme")
                }
            }
        }
        render_in(pages.env(), name, &ctx).map(Html).map_err(WebError::Template)
    }

    /// Renders one page of an unsaved theme for the editor's preview, in the same sandbox.
    pub fn preview(
        &self,
        overrides: &[(String, String)],
        name: &str,
        ctx: &serde_json::Value,
    ) -> Result<String, String> {
        render_in(&compile(overrides)?, name, &Value::from(Serde(ctx)))
    }

    /// Checks a theme before it is saved: it compiles, and every page renders the given sample
    /// contexts within the sandbox's limits. The error names the template, line and reason.
    pub fn validate(
        &self,
        overrides: &[(String, String)],
        samples: &[(&str, serde_json::Value)],
    ) -> Result<(), String> {
        let env = compile(overrides)?;
        for (name, ctx) in samples {
            render_in(&env, name, &Value::from(Serde(ctx)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(&'static str, serde_json::Value)> {
        vec![(
            "home.html",
            serde_json::json!({ "site": { "store": { "name": "Test" }, "base": "/t" }, "products": [] }),
        )]
    }

    #[test]
    fn a_syntax_error_names_the_template_and_line() {
        let t = Themes::new();
        let bad = vec![("home.html".to_string(), "<h1>Hi</h1>\n{% if %}\n".to_string())];
        let e = t.validate(&bad, &sample()).unwrap_err();
        assert!(e.contains("storefront/home.html, line 2"), "{e}");
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        let t = Themes::new();
        let bad = vec![(
            "home.html".to_string(),
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}".to_string(),
        )];
        let e = t.validate(&bad, &sample()).unwrap_err();
        assert!(e.contains("too much work"), "{e}");
    }

    #[test]
    fn only_theme_templates_can_be_overridden() {
        let bad = vec![("../../etc/passwd".to_string(), "x".to_string())];
        assert!(compile(&bad).unwrap_err().contains("not a template of the theme"));
    }

    #[test]
    fn templates_cannot_include_files_from_disk() {
        let t = Themes::new();
        let bad = vec![("home.html".to_string(), "{% include '/etc/passwd' %}".to_string())];
        assert!(t.validate(&bad, &sample()).is_err());
    }

    #[test]
    fn output_is_escaped_unless_the_merchant_template_says_otherwise() {
        let env = compile(&[("home.html".to_string(), "{{ site.store.name }}".to_string())]).unwrap();
        let ctx = Value::from(Serde(serde_json::json!({ "site": { "store": { "name": "<script>x</script>" } } })));
        assert_eq!(render_in(&env, "home.html", &ctx).unwrap(), "&lt;script&gt;x&lt;/script&gt;");
    }
}
