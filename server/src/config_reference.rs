//! The configuration reference in `docs/configuration.md`, generated from the clap
//! definitions in [`crate::config::Args`] so the docs cannot drift from the flags. The
//! test below fails when the committed section differs; `UPDATE_GOLDEN=1 cargo test -p
//! chat-server config_reference` rewrites it.

use clap::CommandFactory;

use crate::config::Args;

/// The lines that enclose the generated section in `docs/configuration.md`.
const BEGIN: &str = "<!-- BEGIN GENERATED: server flags (UPDATE_GOLDEN=1 cargo test -p chat-server config_reference) -->";
const END: &str = "<!-- END GENERATED -->";

/// One table row per visible flag: flag, environment variable, default, description.
fn reference_table() -> String {
    let command = Args::command();
    let mut out = String::from(
        "| Flag | Environment variable | Default | What it does |\n|---|---|---|---|\n",
    );
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_hide_set() || id == "help" || id == "version" {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        let flag = if arg.get_action().takes_values() {
            format!("`--{long} <{}>`", id.to_uppercase())
        } else {
            format!("`--{long}`")
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default = match arg.get_default_values() {
            [] if arg.get_action().takes_values() => "unset".to_owned(),
            [] => "off".to_owned(),
            [v] if v.is_empty() => "empty".to_owned(),
            values => values
                .iter()
                .map(|v| format!("`{}`", v.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let mut what = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !choices.is_empty() && arg.get_action().takes_values() {
            what.push_str(&format!(" One of: {}.", choices.join(", ")));
        }
        out.push_str(&format!(
            "| {flag} | {env} | {default} | {} |\n",
            what.replace('|', "\\|")
        ));
    }
    out
}

/// `doc` with its generated section replaced by `table`; `None` without both markers.
fn with_table(doc: &str, table: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = start + doc[start..].find(END)?;
    Some(format!("{}\n\n{table}\n{}", &doc[..start], &doc[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");

    #[test]
    fn config_reference_in_the_docs_matches_the_flags() {
        let doc = std::fs::read_to_string(DOC).expect("docs/configuration.md");
        let generated = with_table(&doc, &reference_table())
            .unwrap_or_else(|| panic!("docs/configuration.md lacks the lines {BEGIN} … {END}"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(DOC, &generated).expect("write docs/configuration.md");
            return;
        }
        assert!(
            doc == generated,
            "docs/configuration.md differs from the flags in server/src/config.rs: run \
             `UPDATE_GOLDEN=1 cargo test -p chat-server config_reference` and commit it"
        );
    }

    #[test]
    fn every_visible_flag_has_a_row_with_its_variable() {
        let table = reference_table();
        for arg in Args::command().get_arguments() {
            if arg.is_hide_set() || arg.get_long().is_none() {
                continue;
            }
            if let Some(env) = arg.get_env() {
                assert!(
                    table.contains(&format!("`{}`", env.to_string_lossy())),
                    "{env:?}"
                );
            }
        }
        assert!(
            !table.contains("CHAT_JWT_RS256_PUBLIC_KEY_FILE"),
            "hidden flags stay out"
        );
    }

    #[test]
    fn the_section_is_replaced_between_its_markers_only() {
        let doc = format!("before\n{BEGIN}\nold\n{END}\nafter\n");
        let out = with_table(&doc, "| t |\n").expect("markers");
        assert_eq!(out, format!("before\n{BEGIN}\n\n| t |\n\n{END}\nafter\n"));
        assert_eq!(with_table("no markers", "x"), None);
    }
}
