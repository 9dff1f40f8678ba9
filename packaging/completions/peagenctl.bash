# bash completion for peagenctl (fallback; replaced at build time by the
# output of `peagenctl completions bash` when the binary provides it).
_peagenctl() {
    local cur prev words cword
    _init_completion || return
    case $prev in
        --config) _filedir toml; return ;;
    esac
    local i cmd=
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
            --config) ((i++)) ;;
            -*) ;;
            *) cmd+="${cmd:+ }${words[i]}" ;;
        esac
    done
    case $cmd in
        "") COMPREPLY=($(compgen -W "config push task help --config --help --version" -- "$cur")) ;;
        config) COMPREPLY=($(compgen -W "validate" -- "$cur")) ;;
        task) COMPREPLY=($(compgen -W "get" -- "$cur")) ;;
        *) COMPREPLY=($(compgen -W "--config --help" -- "$cur")) ;;
    esac
}
complete -F _peagenctl peagenctl
_peagen_daemon() {
    local cur prev words cword
    _init_completion || return
    [[ $prev == --config ]] && { _filedir toml; return; }
    COMPREPLY=($(compgen -W "--config --help --version" -- "$cur"))
}
complete -F _peagen_daemon peagen-worker peagen-spawnerd
