//! The model publishers' chat templates of Qwen2.5, Qwen3, Llama 3.1, Llama 3.2 and Mistral Nemo
//! against transformers: the rendered text of every fixture conversation, byte for byte, and the
//! answers' byte ranges, on `fixtures/templates/golden_templates.json` written by
//! `scripts/make_template_fixtures.py` (see `fixtures/templates/README.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use feinschliff_data::template::{ChatTemplate, Message};
use feinschliff_data::tokenize::TokenizerConfig;
use serde::Deserialize;

const QWEN3: &str = "Qwen-Qwen3-0.6B";
const NEMO: &str = "mistralai-Mistral-Nemo-Instruct-2407";

#[derive(Deserialize)]
struct Golden {
    transformers_version: String,
    templates: BTreeMap<String, TemplateFiles>,
    cases: Vec<Case>,
    errors: Vec<ErrorCase>,
}

#[derive(Deserialize)]
struct TemplateFiles {
    file: String,
    tagged_file: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

#[derive(Deserialize)]
struct GoldenMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    template: String,
    messages: Vec<GoldenMessage>,
    add_generation_prompt: bool,
    /// Parsed straight into minijinja values, so the tools' keys keep the file's order.
    kwargs: BTreeMap<String, minijinja::Value>,
    text: String,
    answers: Option<Vec<(usize, usize)>>,
    today: Option<String>,
}

#[derive(Deserialize)]
struct ErrorCase {
    name: String,
    template: String,
    messages: Vec<GoldenMessage>,
    error: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates")
}

fn golden() -> Golden {
    let text = std::fs::read_to_string(dir().join("golden_templates.json")).unwrap();
    let golden: Golden = serde_json::from_str(&text).unwrap();
    assert!(!golden.transformers_version.is_empty());
    golden
}

fn messages(golden: &[GoldenMessage]) -> Vec<Message> {
    golden
        .iter()
        .map(|m| Message::new(&m.role, &m.content))
        .collect()
}

/// The template `name` (or its copy with generation blocks) with the model's special tokens
/// and `kwargs` set.
fn template(
    golden: &Golden,
    name: &str,
    tagged: bool,
    kwargs: &BTreeMap<String, minijinja::Value>,
) -> ChatTemplate {
    let files = &golden.templates[name];
    let file = if tagged {
        &files.tagged_file
    } else {
        &files.file
    };
    let config = TokenizerConfig {
        bos_token: files.bos_token.clone(),
        eos_token: files.eos_token.clone(),
        chat_template: Some(std::fs::read_to_string(dir().join(file)).unwrap()),
        chat_template_path: file.into(),
        ..TokenizerConfig::default()
    };
    let mut template = ChatTemplate::new(&config).unwrap();
    for (key, value) in kwargs {
        template.set_variable(key, value);
    }
    template
}

fn ranges(answers: &[(usize, usize)]) -> Vec<std::ops::Range<usize>> {
    answers.iter().map(|&(start, end)| start..end).collect()
}

/// Whether rendering answer by answer must be refused: the template renders the beginning of a
/// conversation differently once more follows.
fn prefix_refused(case: &Case) -> bool {
    let answers: Vec<&str> = (case.messages.iter())
        .filter(|m| m.role == "assistant")
        .map(|m| m.content.as_str())
        .collect();
    let no_thinking = case.kwargs.get("enable_thinking") == Some(&false.into());
    match case.template.as_str() {
        // Qwen3 shows a <think> block (an empty one at least) only in the answers after the last
        // question: an earlier answer loses it once the next question follows. Without thinking
        // the generation prompt ends with an empty <think> block, which an answer with reasoning
        // does not continue.
        QWEN3 => answers.len() > 1 || (no_thinking && answers[0].contains("</think>")),
        // Mistral Nemo puts the system message into the last user turn, and only where the
        // conversation ends with it: an answer after it removes it. The tools go before the
        // last user turn: a later question moves them.
        NEMO => {
            let questions = case.messages.iter().filter(|m| m.role == "user").count();
            case.messages[0].role == "system"
                || (case.kwargs.contains_key("tools") && questions > 1)
        }
        _ => false,
    }
}

#[test]
fn texts_are_transformers_texts() {
    let golden = golden();
    let mut checked = 0;
    for case in golden.cases.iter().filter(|c| c.today.is_none()) {
        let template = template(&golden, &case.template, false, &case.kwargs);
        let text = template
            .render(&messages(&case.messages), case.add_generation_prompt)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(text, case.text, "{}", case.name);
        checked += 1;
    }
    assert!(checked >= 100, "only {checked} cases");
    assert_eq!(golden.templates.len(), 5);
}

#[test]
fn generation_blocks_mark_what_transformers_masks() {
    let golden = golden();
    let mut checked = 0;
    for case in &golden.cases {
        let Some(answers) = &case.answers else {
            continue;
        };
        let template = template(&golden, &case.template, true, &case.kwargs);
        let (text, ours) = template
            .render_answers(&messages(&case.messages))
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(text, case.text, "{}", case.name);
        assert_eq!(ours, ranges(answers), "{}", case.name);
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} cases");
}

#[test]
fn answers_found_by_prefixes_match_or_are_refused() {
    let golden = golden();
    let (mut matched, mut refused) = (0, 0);
    for case in &golden.cases {
        let Some(answers) = &case.answers else {
            continue;
        };
        let template = template(&golden, &case.template, false, &case.kwargs);
        match template.render_answers(&messages(&case.messages)) {
            Ok((text, ours)) => {
                assert!(!prefix_refused(case), "{}: not refused", case.name);
                assert_eq!(text, case.text, "{}", case.name);
                assert_eq!(ours, ranges(answers), "{}", case.name);
                matched += 1;
            }
            Err(e) => {
                let message = e.to_string();
                assert!(prefix_refused(case), "{}: {message}", case.name);
                assert!(
                    message.contains("add {% generation %}…{% endgeneration %}"),
                    "{message}"
                );
                assert!(!message.contains('\n'), "{message}");
                refused += 1;
            }
        }
    }
    assert!(
        matched >= 40 && refused >= 10,
        "{matched} matched, {refused} refused"
    );
}

#[test]
fn strftime_now_gives_todays_date() {
    let golden = golden();
    let case = golden.cases.iter().find(|c| c.today.is_some()).unwrap();
    let fixture_day = format!("Today Date: {}\n", case.today.as_ref().unwrap());
    assert!(case.text.contains(&fixture_day));
    let template = template(&golden, &case.template, false, &case.kwargs);
    let today = || chrono::Local::now().format("%d %b %Y").to_string();
    let before = today();
    let text = template.render(&messages(&case.messages), false).unwrap();
    let after = today();
    let expected = |day: &str| {
        case.text
            .replace(&fixture_day, &format!("Today Date: {day}\n"))
    };
    assert!(
        text == expected(&before) || text == expected(&after),
        "{text}"
    );
}

#[test]
fn raise_exception_gives_the_templates_message() {
    let golden = golden();
    for case in &golden.errors {
        let template = template(&golden, &case.template, false, &BTreeMap::new());
        let message = template
            .render(&messages(&case.messages), false)
            .unwrap_err()
            .to_string();
        assert!(message.contains(&case.error), "{}: {message}", case.name);
    }
}
