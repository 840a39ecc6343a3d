//! Markdown from labs and users: pulldown-cmark to HTML, code blocks
//! highlighted by syntect (as CSS classes, coloured by `static/style.css`),
//! then everything cleaned by ammonia. The grammars are syntect's defaults
//! plus two-face's extras, which add TOML (the language of recipes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use syntect::html::{ClassStyle, ClassedHTMLGenerator};
use syntect::parsing::SyntaxSet;
use syntect::util::LinesWithEndings;

/// The prefix of highlighting classes (`hl-keyword`, `hl-string`, …).
const CLASS_STYLE: ClassStyle = ClassStyle::SpacedPrefixed { prefix: "hl-" };

fn syntaxes() -> &'static SyntaxSet {
    static SET: OnceLock<SyntaxSet> = OnceLock::new();
    SET.get_or_init(two_face::syntax::extra_newlines)
}

/// Highlighted HTML of `code` in `lang` (escaped plain text when the
/// language is unknown). The output holds only `span` elements with classes.
pub fn highlight(code: &str, lang: &str) -> String {
    let set = syntaxes();
    let syntax = match lang.trim() {
        "" => None,
        l => set
            .find_syntax_by_token(l)
            .or_else(|| set.find_syntax_by_extension(l)),
    };
    let Some(syntax) = syntax else {
        return ammonia::clean_text(code);
    };
    let mut gen = ClassedHTMLGenerator::new_with_class_style(syntax, set, CLASS_STYLE);
    for line in LinesWithEndings::from(code) {
        if gen
            .parse_html_for_line_which_includes_newline(line)
            .is_err()
        {
            return ammonia::clean_text(code);
        }
    }
    gen.finalize()
}

fn sanitizer() -> &'static ammonia::Builder<'static> {
    static CLEAN: OnceLock<ammonia::Builder<'static>> = OnceLock::new();
    CLEAN.get_or_init(|| {
        let mut b = ammonia::Builder::default();
        b.add_tag_attributes("span", &["class"])
            .add_tag_attributes("code", &["class"])
            .add_tag_attributes("pre", &["class"])
            .link_rel(Some("noopener noreferrer nofollow"));
        b
    })
}

/// Markdown to safe HTML, with highlighted code blocks.
pub fn render(markdown: &str) -> String {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_TASKLISTS;
    let mut events = Vec::new();
    let mut code: Option<(String, String)> = None;
    for event in Parser::new_ext(markdown, options) {
        match event {
            Event::Start(Tag::CodeBlock(kind)) => {
                let lang = match kind {
                    CodeBlockKind::Fenced(l) => l.split([',', ' ']).next().unwrap_or("").to_owned(),
                    CodeBlockKind::Indented => String::new(),
                };
                code = Some((lang, String::new()));
            }
            Event::Text(t) if code.is_some() => {
                if let Some((_, buf)) = code.as_mut() {
                    buf.push_str(&t);
                }
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some((lang, buf)) = code.take() {
                    let class = if lang.is_empty() {
                        String::new()
                    } else {
                        format!(" class=\"language-{}\"", ammonia::clean_text(&lang))
                    };
                    events.push(Event::Html(
                        format!(
                            "<pre class=\"code\"><code{class}>{}</code></pre>\n",
                            highlight(&buf, &lang)
                        )
                        .into(),
                    ));
                }
            }
            e => events.push(e),
        }
    }
    let mut html = String::with_capacity(markdown.len() * 2);
    pulldown_cmark::html::push_html(&mut html, events.into_iter());
    sanitizer().clean(&html).to_string()
}

/// Rendered Markdown cached by a content key (a lab package's hash): lab
/// pages are read far more often than labs change.
pub fn render_cached(key: &str, markdown: impl FnOnce() -> String) -> Arc<String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(key).cloned()) {
        return hit;
    }
    let html = Arc::new(render(&markdown()));
    if let Ok(mut c) = cache.lock() {
        // Lab packages are few; a bound keeps a long-running server small.
        if c.len() > 256 {
            c.clear();
        }
        c.insert(key.to_owned(), html.clone());
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_and_handlers_are_removed() {
        let html = render(
            "# Title\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n[x](javascript:alert(1))",
        );
        assert!(html.contains("<h1>Title</h1>"));
        assert!(!html.contains("<script"));
        assert!(!html.contains("onerror"));
        assert!(!html.contains("javascript:"));
    }

    #[test]
    fn code_blocks_are_highlighted_and_escaped() {
        let html = render("```rust\nfn main() { let x = \"<b>\"; }\n```\n");
        assert!(html.contains("<pre class=\"code\">"), "{html}");
        assert!(
            html.contains("hl-keyword") || html.contains("hl-storage"),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;"), "{html}");
        let toml = render("```toml\nlearning_rate = 1e-3 # peak\n```\n");
        assert!(toml.contains("hl-comment"), "{toml}");
    }

    #[test]
    fn tables_render() {
        let html = render("| a | b |\n|---|---|\n| 1 | 2 |\n");
        assert!(
            html.contains("<table>") && html.contains("<td>1</td>"),
            "{html}"
        );
    }
}
