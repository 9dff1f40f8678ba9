# bash completion for peagenctl, peagen-worker and peagen-spawnerd.
# Hand-written fallback; the package build installs the output of
# `peagenctl completions bash` instead when the binary provides it.
_peagenctl() {
    local cur prev words cword
    _init_completion || return
    case $prev in
        -c|--config) _filedir toml; return ;;
        --file) _filedir; return ;;
        -k|--kind) COMPREPLY=($(compgen -W "echo execute" -- "$cur")); return ;;
        -p|--payload|--id|--requires|--max-attempts|--timeout-ms|--deadline|--trace-id|--count|--wait|--limit) return ;;
    esac
    local i cmd=
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
            -c|--config|--file|-k|--kind|-p|--payload|--id|--requires|--max-attempts|--timeout-ms|--deadline|--trace-id|--count|--wait|--limit) ((i++)) ;;
            -*) ;;
            *) cmd+="${cmd:+ }${words[i]}" ;;
        esac
    done
    local global="-c --config --json -h --help"
    case $cmd in
        "") COMPREPLY=($(compgen -W "push task queue workers config budget help $global -V --version" -- "$cur")) ;;
        push) COMPREPLY=($(compgen -W "-k --kind -p --payload --id --requires --max-attempts --timeout-ms --deadline --trace-id --file --count $global" -- "$cur")) ;;
        task) COMPREPLY=($(compgen -W "get" -- "$cur")) ;;
        "task get"*) COMPREPLY=($(compgen -W "--wait $global" -- "$cur")) ;;
        queue) COMPREPLY=($(compgen -W "stats dlq" -- "$cur")) ;;
        "queue dlq") COMPREPLY=($(compgen -W "list export retry" -- "$cur")) ;;
        "queue dlq list") COMPREPLY=($(compgen -W "--limit $global" -- "$cur")) ;;
        "queue dlq retry"*) COMPREPLY=($(compgen -W "--all $global" -- "$cur")) ;;
        config) COMPREPLY=($(compgen -W "validate show" -- "$cur")) ;;
        *) COMPREPLY=($(compgen -W "$global" -- "$cur")) ;;
    esac
}
complete -F _peagenctl peagenctl

_peagen_daemon() {
    local cur prev words cword
    _init_completion || return
    case $prev in -c|--config) _filedir toml; return ;; esac
    local opts="-c --config -h --help -V --version"
    [[ ${words[0]##*/} == peagen-worker && $cword -ge 1 ]] && opts+=" run sandbox-run"
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -F _peagen_daemon peagen-worker peagen-spawnerd
