# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_peagen_worker_global_optspecs
    string join \n c/config= h/help V/version
end

function __fish_peagen_worker_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_peagen_worker_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_peagen_worker_using_subcommand
    set -l cmd (__fish_peagen_worker_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -s h -l help -d 'Print help'
complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -s V -l version -d 'Print version'
complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -f -a "run" -d 'Run the consume loop (the default)'
complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -f -a "sandbox-run" -d 'Run a command in the execute sandbox and print its verdict (debugging)'
complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand run" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand run" -s h -l help -d 'Print help'
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand help; and not __fish_seen_subcommand_from run sandbox-run help" -f -a "run" -d 'Run the consume loop (the default)'
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand help; and not __fish_seen_subcommand_from run sandbox-run help" -f -a "sandbox-run" -d 'Run a command in the execute sandbox and print its verdict (debugging)'
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand help; and not __fish_seen_subcommand_from run sandbox-run help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
