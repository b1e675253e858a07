# Environment for running QGIS / qgis_process / the tests with this plugin.
#
#   . scripts/env.sh                # in bash/sh: sets the variables below
#   scripts/env.sh CMD [ARGS...]    # runs CMD in that environment
#   eval "$(scripts/env.sh --print)"  # or: eval "$(make -s env)"
#
# Sets:
#   QT_QPA_PLATFORM=offscreen        (unless already set) headless Qt
#   PYTHONPATH=<repo>/.venv/lib/pythonX.Y/site-packages[:old]   torch for QGIS's Python
#   QGIS_PLUGINPATH=<repo>[:old]     QGIS finds the plugin folder <repo>/ismoe_qgis
#   QGIS_PROCESS=<binary>            /usr/bin/qgis_process.bin on Debian (the
#                                    /usr/bin/qgis_process wrapper passes
#                                    --noversioncheck, which 3.22 rejects)
# QGIS_CUSTOM_CONFIG_PATH is left alone: set it to use an isolated QGIS profile folder.

_ismoe_env_main() {
    _ismoe_here=$1
    ISMOE_ROOT=$(cd "$(dirname "$_ismoe_here")/.." && pwd)
    export ISMOE_ROOT
    export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"

    for _ismoe_site in "$ISMOE_ROOT"/.venv/lib/python3*/site-packages; do
        if [ -d "$_ismoe_site" ]; then
            case ":${PYTHONPATH:-}:" in
                *":$_ismoe_site:"*) ;;
                *) PYTHONPATH="$_ismoe_site${PYTHONPATH:+:$PYTHONPATH}" ;;
            esac
            export PYTHONPATH
        fi
    done
    case ":${QGIS_PLUGINPATH:-}:" in
        *":$ISMOE_ROOT:"*) ;;
        *) QGIS_PLUGINPATH="$ISMOE_ROOT${QGIS_PLUGINPATH:+:$QGIS_PLUGINPATH}" ;;
    esac
    export QGIS_PLUGINPATH

    if [ -z "${QGIS_PROCESS:-}" ]; then
        if [ -x /usr/bin/qgis_process.bin ]; then
            QGIS_PROCESS=/usr/bin/qgis_process.bin
        elif command -v qgis_process.bin >/dev/null 2>&1; then
            QGIS_PROCESS=$(command -v qgis_process.bin)
        elif command -v qgis_process >/dev/null 2>&1; then
            QGIS_PROCESS=$(command -v qgis_process)
        else
            QGIS_PROCESS=qgis_process  # not installed: fails with a clear "not found"
        fi
    fi
    export QGIS_PROCESS
}

# Needs bash to be sourced from elsewhere (the file finds itself through BASH_SOURCE).
_ismoe_self=${BASH_SOURCE:-$0}
_ismoe_env_main "$_ismoe_self"

# Executed (not sourced) with arguments: run them in this environment.
if [ "$_ismoe_self" = "$0" ]; then
    if [ "${1:-}" = "--print" ]; then
        for _v in ISMOE_ROOT QT_QPA_PLATFORM PYTHONPATH QGIS_PLUGINPATH QGIS_PROCESS; do
            eval "printf 'export %s=%s\n' \"\$_v\" \"'\${$_v}'\""
        done
        exit 0
    elif [ $# -gt 0 ]; then
        exec "$@"
    fi
fi
