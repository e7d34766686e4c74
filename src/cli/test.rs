//! `portcullis test`: runs decision case files and prints each failure as
//! `file:line: name: ...`; never reads as a pass when nothing ran.

use super::*;

pub(super) fn test(paths: &[PathBuf], grants_database_url: Option<String>) -> ExitCode {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            p.is_file()
                                && p.extension()
                                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                        })
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => {
                    eprintln!("{}: cannot read directory: {e}", path.display());
                    return Exit::Failure.into();
                }
            }
        } else {
            files.push(path.clone());
        }
    }
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
    let mut runner = crate::cases::CaseRunner::new();
    // Grants from the database: the store `serve` would use, on a runtime
    // of this command's own.
    if let Some(url) = grants_database_url {
        let runtime = match super::db::runtime() {
            Ok(runtime) => runtime,
            Err(code) => return code,
        };
        let config = crate::grants_db::DatabaseConfig::new(url);
        let store = match runtime.block_on(crate::grants_db::GrantStore::open(config)) {
            Ok((store, _feed)) => store,
            Err(e) => {
                eprintln!("{e}");
                return Exit::Failure.into();
            }
        };
        runner = runner.with_grants(Box::new(move |policy, decide| {
            runtime.block_on(crate::pdp::decide_with_cache(&store, policy, None, decide))
        }));
    }
    for file in &files {
        let outcome = runner.run_file(file);
        // Each policy directory's warnings once, when it is first loaded.
        for warning in runner.take_warnings() {
            eprintln!("{warning}");
        }
        match outcome {
            Ok(outcomes) => {
                for outcome in outcomes {
                    match outcome.failure {
                        None => passed += 1,
                        Some(failure) => {
                            failed += 1;
                            println!(
                                "{}:{}: {}: {failure}",
                                file.display(),
                                outcome.line,
                                outcome.name
                            );
                        }
                    }
                }
            }
            Err(errors) => {
                broken += 1;
                for e in errors {
                    println!("{e}");
                }
            }
        }
    }
    // A summary never reads as a pass when nothing ran.
    if passed + failed == 0 {
        let why = if files.is_empty() {
            "no case files (*.yaml, *.yml, *.json) found".to_owned()
        } else if broken > 0 {
            format!("{broken} of {} case files could not be run", files.len())
        } else {
            format!("the {} case files hold no cases", files.len())
        };
        println!("FAILED: no case ran: {why}");
        return Exit::Failure.into();
    }
    let not_run = match broken {
        0 => String::new(),
        1 => ", 1 case file not run".to_owned(),
        n => format!(", {n} case files not run"),
    };
    println!("{passed} passed, {failed} failed{not_run}");
    if broken > 0 || failed > 0 {
        Exit::Failure.into()
    } else {
        Exit::Ok.into()
    }
}

/// `portcullis test --explore DIR`: the spellings an attacker would try,
/// decided by the engine; every one answered differently from its
/// canonical spelling is printed, and fails the command.
pub(super) fn explore(dir: &Path) -> ExitCode {
    let Some(loaded) = super::validate::loaded_or_report(dir, UnreadableKeys::Unverifiable) else {
        return Exit::Failure.into();
    };
    let found = crate::lint::explore(&loaded.policy, &loaded.origins);
    for sidestep in &found {
        println!("sidestep: {sidestep}");
    }
    if found.is_empty() {
        println!("explore: no spelling answered differently from its canonical request");
        Exit::Ok.into()
    } else {
        println!("explore: {} sidestep(s)", found.len());
        Exit::Failure.into()
    }
}
