#!/bin/bash
# shellcheck shell=bash
# secmig-nova devstack plugin: dispatches the stack phases to lib/secmig.
#
#   enable_plugin secmig-nova <repo> [branch]      (local.conf)

# shellcheck source=devstack/lib/secmig
source "$DEST/secmig-nova/devstack/lib/secmig"

if is_service_enabled secmig-broker; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing secmig-nova"
        install_secmig
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        echo_summary "Configuring secmig-nova"
        configure_secmig_ca
        configure_secmig_nova
        configure_secmig_broker
        create_secmig_accounts
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        echo_summary "Starting secmig-broker"
        start_secmig_broker
    fi
    if [[ "$1" == "unstack" ]]; then
        stop_secmig_broker
    fi
    if [[ "$1" == "clean" ]]; then
        cleanup_secmig
    fi
fi
