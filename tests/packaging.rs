//! What the package ships reads right: man pages, completions, the unit.

use std::process::Command;

fn man_pages() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/man");
    let mut pages: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    assert_eq!(pages.len(), 2, "{pages:?}");
    pages
}

#[test]
fn every_man_page_entry_has_its_heading_on_one_line() {
    // `.TP` takes the next line as the heading: a heading written over several lines
    // puts the rest of it into the body.
    for page in man_pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.trim() == ".TP"
                && let Some(after) = lines.get(i + 2)
            {
                assert!(
                    !FONT_MACROS.iter().any(|m| after.starts_with(m)),
                    "{}:{}: the heading {:?} goes on in {:?}",
                    page.display(),
                    i + 3,
                    lines[i + 1],
                    after
                );
            }
        }
    }
}

/// Font macros that, right after a heading line, continue it.
const FONT_MACROS: &[&str] = &[".B ", ".I ", ".BR ", ".IR ", ".BI ", ".IB ", ".RB ", ".RI "];

#[test]
fn man_pages_render_without_warnings() {
    for page in man_pages() {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&page)
            .output()
            .expect("groff (package groff-base) renders the man pages");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{}: {err}",
            page.display()
        );
    }
}
