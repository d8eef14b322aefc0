//! Hugging Face chat templates (Jinja) rendered with minijinja.
//!
//! The environment mirrors what `transformers` sets up: `trim_blocks` and `lstrip_blocks`,
//! Python string methods (`.strip()`, `.startswith()`, ...) through minijinja-contrib's
//! pycompat, `raise_exception`, `strftime_now`, loop controls, and a `tojson` that spaces its
//! output like Python's `json.dumps`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};

use crate::{ChatMessage, Error, Result, Role};

const NAME: &str = "chat";

/// ChatML without a default system prompt: the fallback for models that ship no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' \
    + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}\
    {{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A compiled chat template plus the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: Option<String>,
    eos: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// Gemma 3's chat template as its `tokenizer_config.json` has it.
const GEMMA: &str = include_str!("gemma_chat_template.jinja");

/// Template instructions one rendering may run.
const TEMPLATE_FUEL: u64 = 1_000_000;

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with its line.
    pub fn new(source: &str, bos: Option<&str>, eos: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // A template comes with the model file: loops it cannot finish must end with an
        // error, not hold the worker.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", py_tojson);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| Error::TemplateSyntax(e.to_string()))?;
        Ok(Self {
            env,
            source: source.to_owned(),
            bos: bos.map(str::to_owned),
            eos: eos.map(str::to_owned),
        })
    }

    /// The built-in ChatML template (`<|im_start|>role\n...<|im_end|>\n`).
    pub fn chatml() -> Self {
        #[allow(clippy::expect_used)] // a constant, covered by the tests
        Self::new(CHATML, None, Some("<|im_end|>")).expect("the built-in ChatML template parses")
    }

    /// Gemma's own template (Gemma 2 and 3 write the same turns), for Gemma files that
    /// carry none: a system message leads the first user turn, `assistant` is `model`.
    pub fn gemma(bos: Option<&str>) -> Self {
        #[allow(clippy::expect_used)] // a constant, covered by the tests
        Self::new(GEMMA, bos, Some("<end_of_turn>")).expect("the built-in Gemma template parses")
    }

    /// The Jinja source this template was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template renders tools itself (it reads a `tools` variable); others are
    /// told about tools in their system message (see [`with_tools_in_text`]).
    pub fn renders_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// Renders the prompt. `tools` is left undefined when empty, as `transformers` does, so
    /// templates take their no-tools branch.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_with(messages, tools, add_generation_prompt, None)
    }

    /// [`render`](Self::render), telling a thinking model's template whether to reason
    /// (`enable_thinking`; left undefined when `None`, so the template's default holds).
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
        thinking: Option<bool>,
    ) -> Result<String> {
        let rewritten;
        let (messages, tools) = if tools.is_empty() || self.renders_tools() {
            (messages, tools)
        } else {
            rewritten = with_tools_in_text(messages, tools);
            (&rewritten[..], &[][..])
        };
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut message = BTreeMap::from([
                    ("role", Value::from(Role::as_str(m.role))),
                    ("content", Value::from(m.content.as_str())),
                ]);
                if !m.tool_calls.is_empty() {
                    message.insert("tool_calls", tool_calls(&m.tool_calls));
                }
                if let Some(id) = &m.tool_call_id {
                    message.insert("tool_call_id", Value::from(id.as_str()));
                }
                Value::from(message)
            })
            .collect();
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("date_string", Value::from(strftime_utc(unix_now(), "%d %b %Y")));
        if !tools.is_empty() {
            ctx.insert("tools", Value::from_serialize(tools));
        }
        if let Some(thinking) = thinking {
            ctx.insert("enable_thinking", Value::from(thinking));
        }
        if let Some(bos) = &self.bos {
            ctx.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos {
            ctx.insert("eos_token", Value::from(eos.as_str()));
        }
        let template =
            self.env.get_template(NAME).map_err(|e| Error::TemplateSyntax(e.to_string()))?;
        let mut out = Bounded { bytes: Vec::new(), overflowed: false };
        template.render_captured_to(ctx, &mut out).map_err(|e| {
            Error::TemplateRender(if out.overflowed {
                format!("the prompt grew past {} MiB", MAX_PROMPT_BYTES >> 20)
            } else {
                e.to_string()
            })
        })?;
        String::from_utf8(out.bytes).map_err(|e| Error::TemplateRender(e.to_string()))
    }
}

/// The largest prompt a template may render: far beyond any model's context, but a
/// template looping over large strings stops here instead of taking the machine's memory.
const MAX_PROMPT_BYTES: usize = 64 << 20;

/// A writer that refuses to grow past [`MAX_PROMPT_BYTES`].
struct Bounded {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + bytes.len() > MAX_PROMPT_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("prompt too large"));
        }
        self.bytes.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Tool calls as `transformers` passes them to templates: OpenAI's shape with the
/// arguments parsed (templates `tojson` them), or as text when they are not JSON.
fn tool_calls(calls: &[crate::ToolCall]) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .map(|c| {
            let arguments = serde_json::from_str::<serde_json::Value>(&c.arguments)
                .map_or_else(|_| Value::from(c.arguments.as_str()), |v| Value::from_serialize(&v));
            minijinja::context! {
                id => c.id,
                type => "function",
                function => minijinja::context! { name => c.name, arguments => arguments },
            }
        })
        .collect();
    Value::from(calls)
}

/// A conversation for a template that knows no tools, in the Hermes format a model without
/// a tool format of its own is told to use: the tools and how to call them at the end of
/// the system message, earlier calls as `<tool_call>` text, their results as user messages
/// in `<tool_response>` tags (as Qwen2.5's template writes them).
fn with_tools_in_text(messages: &[ChatMessage], tools: &[serde_json::Value]) -> Vec<ChatMessage> {
    let preamble = fleet_grammar::tools_preamble(tools);
    let mut out = Vec::with_capacity(messages.len() + 1);
    let rest = match messages.first() {
        Some(first) if first.role == Role::System => {
            out.push(ChatMessage::new(Role::System, format!("{}\n\n{preamble}", first.content)));
            &messages[1..]
        }
        _ => {
            out.push(ChatMessage::new(Role::System, preamble));
            messages
        }
    };
    for m in rest {
        out.push(match m.role {
            Role::Assistant if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                for call in &m.tool_calls {
                    let arguments = serde_json::from_str::<serde_json::Value>(&call.arguments)
                        .unwrap_or_else(|_| call.arguments.clone().into());
                    // By hand: `name` first, as the grammar has models write it.
                    let call = format!(
                        r#"{{"name": {}, "arguments": {arguments}}}"#,
                        serde_json::Value::from(call.name.as_str())
                    );
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!(
                        "{}\n{call}\n{}",
                        fleet_grammar::CALL_OPEN,
                        fleet_grammar::CALL_CLOSE
                    ));
                }
                ChatMessage::new(Role::Assistant, text)
            }
            Role::Tool => ChatMessage::new(
                Role::User,
                format!("<tool_response>\n{}\n</tool_response>", m.content),
            ),
            _ => m.clone(),
        });
    }
    out
}

fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> String {
    strftime_utc(unix_now(), &format)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `json.dumps(value, ensure_ascii=False, indent=indent)`: `", "` and `": "` separators, no
/// HTML escaping, keys in their given order.
fn py_tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    use serde::Serialize;
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut buf = Vec::new();
    let written = match indent {
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut buf, PyFormatter)),
        Some(n) => {
            let indent = vec![b' '; n];
            let pretty = serde_json::ser::PrettyFormatter::with_indent(&indent);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut buf, pretty))
        }
    };
    let invalid = |e: String| minijinja::Error::new(ErrorKind::InvalidOperation, e);
    written.map_err(|e| invalid(e.to_string()))?;
    let json = String::from_utf8(buf).map_err(|e| invalid(e.to_string()))?;
    Ok(Value::from_safe_string(json))
}

struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] =
    ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// The subset of C `strftime` that chat templates use, in UTC (no time-zone database here).
/// Unknown directives are copied through.
fn strftime_utc(unix_secs: i64, format: &str) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_without_tools_is_told_about_them_in_the_system_message()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let template = ChatTemplate::chatml();
        assert!(!template.renders_tools());
        let tools = [serde_json::json!({"type": "function", "function": {"name": "add"}})];
        let call = crate::ToolCall {
            id: "c1".into(),
            name: "add".into(),
            arguments: r#"{"a": 1}"#.into(),
        };
        let messages = [
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "1+1?"),
            ChatMessage { tool_calls: vec![call], ..ChatMessage::new(Role::Assistant, "") },
            ChatMessage::tool_result("c1", "2"),
        ];
        let prompt = template.render(&messages, &tools, true)?;
        let expected = [
            "<|im_start|>system\nBe brief.\n\n# Tools",
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\":1}}\n</tool_call><|im_end|>",
            "<|im_start|>user\n<tool_response>\n2\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        ];
        for part in expected {
            assert!(prompt.contains(part), "{part:?} not in {prompt}");
        }
        let listed = prompt.split("<tools>\n").nth(1).and_then(|t| t.split("\n</tools>").next());
        let listed: serde_json::Value = serde_json::from_str(listed.unwrap_or_default())?;
        assert_eq!(listed, tools[0]);
        // Without tools the conversation renders as it is.
        assert!(!template.render(&messages[..2], &[], true)?.contains("# Tools"));
        Ok(())
    }

    #[test]
    fn strftime_formats_known_instants() {
        // 2024-07-26 13:25:09 UTC, a Friday, day 208 of a leap year.
        let t = 1_722_000_309;
        assert_eq!(strftime_utc(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(strftime_utc(t, "%A %B %j %H:%M:%S %I%p %y-%m-%d %%"), {
            "Friday July 208 13:25:09 01PM 24-07-26 %"
        });
        assert_eq!(strftime_utc(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
        assert_eq!(strftime_utc(951_782_400, "%Y-%m-%d"), "2000-02-29");
        assert_eq!(strftime_utc(-86_400, "%Y-%m-%d"), "1969-12-31");
    }
}
