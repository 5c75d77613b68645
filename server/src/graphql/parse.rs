//! A strict parser of the GraphQL query documents the ml-dash client sends: one or more
//! `query` operations and `fragment` definitions; selections with aliases, arguments (variables,
//! strings, numbers, booleans, null, enum values, lists, objects), fragment spreads and inline
//! fragments. Mutations, subscriptions and directives are refused, and so is anything larger or
//! deeper than the bounds below, with an error that says where.

#![allow(missing_docs)]

use std::collections::HashMap;

/// Documents longer than this are refused before they are parsed.
pub const MAX_DOCUMENT: usize = 64 * 1024;
/// Selections (and values) nested deeper than this are refused.
pub const MAX_DEPTH: usize = 32;

/// A value in an argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Variable(String),
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Enum(String),
    List(Vec<Value>),
    Object(Vec<(String, Value)>),
}

/// One selection of a selection set.
#[derive(Clone, Debug, PartialEq)]
pub enum Selection {
    Field(Field),
    /// `...Name`
    Spread(String),
    /// `... on Type { ... }` or `... { ... }`
    Inline(Vec<Selection>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub alias: Option<String>,
    pub name: String,
    pub args: Vec<(String, Value)>,
    pub selections: Vec<Selection>,
}

impl Field {
    /// The key of this field in the answer.
    pub fn key(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    pub name: Option<String>,
    pub selections: Vec<Selection>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Document {
    pub operations: Vec<Operation>,
    pub fragments: HashMap<String, Vec<Selection>>,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Punct(char),
    Spread,
    Str(String),
    Int(i64),
    Float(f64),
}

struct Lexer<'a> {
    s: &'a [u8],
    at: usize,
}

impl Lexer<'_> {
    fn err(&self, what: &str) -> String {
        format!("GraphQL syntax error at byte {}: {what}", self.at)
    }

    fn skip_ignored(&mut self) {
        while self.at < self.s.len() {
            match self.s[self.at] {
                b' ' | b'\t' | b'\n' | b'\r' | b',' => self.at += 1,
                0xEF if self.s[self.at..].starts_with(&[0xEF, 0xBB, 0xBF]) => self.at += 3,
                b'#' => {
                    while self.at < self.s.len() && self.s[self.at] != b'\n' {
                        self.at += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn next(&mut self) -> Result<Option<Tok>, String> {
        self.skip_ignored();
        let Some(&c) = self.s.get(self.at) else {
            return Ok(None);
        };
        match c {
            b'{' | b'}' | b'(' | b')' | b':' | b'$' | b'!' | b'[' | b']' | b'=' | b'@' => {
                self.at += 1;
                Ok(Some(Tok::Punct(char::from(c))))
            }
            b'.' => {
                if self.s[self.at..].starts_with(b"...") {
                    self.at += 3;
                    Ok(Some(Tok::Spread))
                } else {
                    Err(self.err("a lone '.'"))
                }
            }
            b'"' => self.string().map(Some),
            b'-' | b'0'..=b'9' => self.number().map(Some),
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                let start = self.at;
                while self.at < self.s.len()
                    && (self.s[self.at] == b'_' || self.s[self.at].is_ascii_alphanumeric())
                {
                    self.at += 1;
                }
                let name = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
                Ok(Some(Tok::Name(name)))
            }
            _ => Err(self.err("an unexpected character")),
        }
    }

    fn string(&mut self) -> Result<Tok, String> {
        if self.s[self.at..].starts_with(b"\"\"\"") {
            return Err(self.err("block strings are not supported"));
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.at) else {
                return Err(self.err("an unterminated string"));
            };
            self.at += 1;
            match c {
                b'"' => break,
                b'\n' | b'\r' => return Err(self.err("a line break in a string")),
                b'\\' => {
                    let Some(&e) = self.s.get(self.at) else {
                        return Err(self.err("an unterminated escape"));
                    };
                    self.at += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self
                                .s
                                .get(self.at..self.at + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.err("a bad \\u escape"))?;
                            self.at += 4;
                            hex
                        }
                        _ => return Err(self.err("an unknown escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out)
            .map(Tok::Str)
            .map_err(|_| self.err("a string that is not UTF-8"))
    }

    fn number(&mut self) -> Result<Tok, String> {
        let start = self.at;
        let mut float = false;
        if self.s[self.at] == b'-' {
            self.at += 1;
        }
        while self.at < self.s.len() {
            match self.s[self.at] {
                b'0'..=b'9' => {}
                b'.' | b'e' | b'E' | b'+' => float = true,
                b'-' if float => {}
                _ => break,
            }
            self.at += 1;
        }
        let text =
            std::str::from_utf8(&self.s[start..self.at]).map_err(|_| self.err("a number"))?;
        if float {
            text.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Tok::Float)
                .ok_or_else(|| self.err("a bad number"))
        } else {
            text.parse::<i64>()
                .map(Tok::Int)
                .map_err(|_| self.err("a bad integer"))
        }
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<Option<Tok>>,
}

impl Parser<'_> {
    fn peek(&mut self) -> Result<Option<&Tok>, String> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex.next()?);
        }
        Ok(self.peeked.as_ref().and_then(Option::as_ref))
    }

    fn bump(&mut self) -> Result<Option<Tok>, String> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex.next(),
        }
    }

    fn expect(&mut self, p: char) -> Result<(), String> {
        match self.bump()? {
            Some(Tok::Punct(c)) if c == p => Ok(()),
            other => Err(self
                .lex
                .err(&format!("expected '{p}', found {}", show(other.as_ref())))),
        }
    }

    fn is(&mut self, p: char) -> Result<bool, String> {
        Ok(matches!(self.peek()?, Some(Tok::Punct(c)) if *c == p))
    }

    fn name(&mut self) -> Result<String, String> {
        match self.bump()? {
            Some(Tok::Name(n)) => Ok(n),
            other => Err(self
                .lex
                .err(&format!("expected a name, found {}", show(other.as_ref())))),
        }
    }

    fn document(&mut self) -> Result<Document, String> {
        let mut doc = Document::default();
        while let Some(t) = self.peek()?.cloned() {
            match t {
                Tok::Punct('{') => {
                    let selections = self.selection_set(0)?;
                    doc.operations.push(Operation {
                        name: None,
                        selections,
                    });
                }
                Tok::Name(n) if n == "query" => {
                    self.bump()?;
                    let name = match self.peek()? {
                        Some(Tok::Name(_)) => Some(self.name()?),
                        _ => None,
                    };
                    if self.is('(')? {
                        self.variable_definitions()?;
                    }
                    self.no_directives()?;
                    let selections = self.selection_set(0)?;
                    doc.operations.push(Operation { name, selections });
                }
                Tok::Name(n) if n == "fragment" => {
                    self.bump()?;
                    let name = self.name()?;
                    if self.name()? != "on" {
                        return Err(self.lex.err("expected 'on' after the fragment name"));
                    }
                    self.name()?;
                    self.no_directives()?;
                    let selections = self.selection_set(0)?;
                    if doc.fragments.insert(name.clone(), selections).is_some() {
                        return Err(format!("fragment {name} is defined twice"));
                    }
                }
                Tok::Name(n) if n == "mutation" || n == "subscription" => {
                    return Err(format!("{n} operations are not supported"));
                }
                other => {
                    return Err(self.lex.err(&format!(
                        "expected an operation or a fragment, found {}",
                        show(Some(&other))
                    )));
                }
            }
        }
        if doc.operations.is_empty() {
            return Err("the document has no operation".into());
        }
        Ok(doc)
    }

    fn no_directives(&mut self) -> Result<(), String> {
        if self.is('@')? {
            return Err(self.lex.err("directives are not supported"));
        }
        Ok(())
    }

    /// `($a: Type!, $b: [Type] = default)`: checked for syntax, otherwise ignored (variables
    /// are looked up by name when used).
    fn variable_definitions(&mut self) -> Result<(), String> {
        self.expect('(')?;
        while !self.is(')')? {
            self.expect('$')?;
            self.name()?;
            self.expect(':')?;
            self.type_ref(0)?;
            if self.is('=')? {
                self.bump()?;
                self.value(0)?;
            }
        }
        self.expect(')')
    }

    fn type_ref(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(self.lex.err("a type nested too deep"));
        }
        if self.is('[')? {
            self.bump()?;
            self.type_ref(depth + 1)?;
            self.expect(']')?;
        } else {
            self.name()?;
        }
        if self.is('!')? {
            self.bump()?;
        }
        Ok(())
    }

    fn selection_set(&mut self, depth: usize) -> Result<Vec<Selection>, String> {
        if depth > MAX_DEPTH {
            return Err(self.lex.err("selections nested too deep"));
        }
        self.expect('{')?;
        let mut out = Vec::new();
        while !self.is('}')? {
            if matches!(self.peek()?, Some(Tok::Spread)) {
                self.bump()?;
                match self.peek()? {
                    Some(Tok::Name(n)) if n == "on" => {
                        self.bump()?;
                        self.name()?;
                        self.no_directives()?;
                        out.push(Selection::Inline(self.selection_set(depth + 1)?));
                    }
                    Some(Tok::Name(_)) => {
                        let name = self.name()?;
                        self.no_directives()?;
                        out.push(Selection::Spread(name));
                    }
                    _ => out.push(Selection::Inline(self.selection_set(depth + 1)?)),
                }
                continue;
            }
            let first = self.name()?;
            let (alias, name) = if self.is(':')? {
                self.bump()?;
                (Some(first), self.name()?)
            } else {
                (None, first)
            };
            let mut args = Vec::new();
            if self.is('(')? {
                self.bump()?;
                while !self.is(')')? {
                    let n = self.name()?;
                    self.expect(':')?;
                    args.push((n, self.value(depth + 1)?));
                }
                self.bump()?;
            }
            self.no_directives()?;
            let selections = if self.is('{')? {
                self.selection_set(depth + 1)?
            } else {
                Vec::new()
            };
            out.push(Selection::Field(Field {
                alias,
                name,
                args,
                selections,
            }));
        }
        self.bump()?;
        if out.is_empty() {
            return Err(self.lex.err("an empty selection set"));
        }
        Ok(out)
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.lex.err("a value nested too deep"));
        }
        match self.bump()? {
            Some(Tok::Punct('$')) => Ok(Value::Variable(self.name()?)),
            Some(Tok::Str(s)) => Ok(Value::String(s)),
            Some(Tok::Int(i)) => Ok(Value::Int(i)),
            Some(Tok::Float(f)) => Ok(Value::Float(f)),
            Some(Tok::Name(n)) => Ok(match n.as_str() {
                "null" => Value::Null,
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::Enum(n),
            }),
            Some(Tok::Punct('[')) => {
                let mut items = Vec::new();
                while !self.is(']')? {
                    items.push(self.value(depth + 1)?);
                }
                self.bump()?;
                Ok(Value::List(items))
            }
            Some(Tok::Punct('{')) => {
                let mut fields = Vec::new();
                while !self.is('}')? {
                    let n = self.name()?;
                    self.expect(':')?;
                    fields.push((n, self.value(depth + 1)?));
                }
                self.bump()?;
                Ok(Value::Object(fields))
            }
            other => Err(self
                .lex
                .err(&format!("expected a value, found {}", show(other.as_ref())))),
        }
    }
}

fn show(t: Option<&Tok>) -> String {
    match t {
        None => "the end".into(),
        Some(Tok::Name(n)) => format!("'{n}'"),
        Some(Tok::Punct(c)) => format!("'{c}'"),
        Some(Tok::Spread) => "'...'".into(),
        Some(Tok::Str(_)) => "a string".into(),
        Some(Tok::Int(_) | Tok::Float(_)) => "a number".into(),
    }
}

/// Parse a query document.
pub fn parse(text: &str) -> Result<Document, String> {
    if text.len() > MAX_DOCUMENT {
        return Err(format!(
            "the document is {} bytes; at most {MAX_DOCUMENT} are accepted",
            text.len()
        ));
    }
    Parser {
        lex: Lexer {
            s: text.as_bytes(),
            at: 0,
        },
        peeked: None,
    }
    .document()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_client_document_with_a_fragment() {
        let d = parse(
            "query GetProjectHierarchy($namespaceSlug: String!, $projectSlug: String!) {
               project(namespaceSlug: $namespaceSlug, projectSlug: $projectSlug) {
                 nodes(parentId: null, maxDepth: 20) { ...NodeFields children { ...NodeFields } }
               }
             }
             fragment NodeFields on Node { id name type pPath experimentId }",
        )
        .unwrap();
        assert_eq!(d.operations[0].name.as_deref(), Some("GetProjectHierarchy"));
        assert_eq!(d.fragments["NodeFields"].len(), 5);
        let Selection::Field(project) = &d.operations[0].selections[0] else {
            panic!("a field")
        };
        assert_eq!(project.args[0].1, Value::Variable("namespaceSlug".into()));
        let Selection::Field(nodes) = &project.selections[0] else {
            panic!("a field")
        };
        assert_eq!(
            nodes.args,
            [
                ("parentId".into(), Value::Null),
                ("maxDepth".into(), Value::Int(20))
            ]
        );
    }

    #[test]
    fn refuses_what_it_does_not_support_and_bad_syntax() {
        for bad in [
            "",
            "mutation { a }",
            "query { a @skip(if: true) }",
            "query { a(b: ) }",
            "query { }",
            "query { a { b }",
            "{ a(s: \"unterminated) }",
            "{ a(s: \"\\q\") }",
            "query Q($a: [[String!]) { a }",
            "fragment F on T { a } fragment F on T { b } { a }",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = format!("{}{}", "{ a ".repeat(100), "}".repeat(100));
        assert!(parse(&deep).unwrap_err().contains("too deep"));
        assert!(
            parse(&" ".repeat(MAX_DOCUMENT + 1))
                .unwrap_err()
                .contains("at most")
        );
    }
}
