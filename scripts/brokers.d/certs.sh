# Sourced by scripts/brokers: throwaway TLS material for the secured listeners (openssl).
#
# make_certs DIR writes what is missing (all of it again once the CA has less than a day left):
#   ca.pem / ca.key            the test CA every broker and client trusts
#   server.pem / server.key    the brokers' certificate: CN and SAN "localhost" only, so a client
#                              that connects to 127.0.0.1 gets a hostname mismatch
#   client.pem / client.key    a client certificate, CN "eventbus-client" (RabbitMQ EXTERNAL
#                              logs in as that user; Kafka's mapping rule makes it
#                              User:eventbus-client)
#   client-encrypted.key       the same key encrypted with the passphrase "client-key-secret"
#   other-ca.pem               a CA nobody trusts, and other-client.pem / other-client.key
#                              signed by it: a client certificate the brokers refuse
# Nothing here is secret: the keys exist for tests on 127.0.0.1 only.

CERT_DAYS=30

make_certs() {
    local dir=$1
    mkdir -p "$(dirname "$dir")"
    # Kafka and RabbitMQ start in parallel and both need them: one makes them, once.
    (
        flock -w 120 9 || die "timed out waiting for $dir.lock"
        _make_certs "$dir"
    ) 9>"$dir.lock"
}

_make_certs() {
    local dir=$1
    command -v openssl >/dev/null 2>&1 || die "openssl is needed to make the test certificates"
    if [[ -d $dir ]] && ! { [[ -s $dir/ca.pem && -s $dir/ca.key ]] &&
        openssl x509 -checkend 86400 -noout -in "$dir/ca.pem" >/dev/null 2>&1; }; then
        log "the test CA in $dir is missing or expires within a day: making all certificates" \
            "again (restart brokers that are running: scripts/brokers restart kafka rabbitmq)"
        rm -rf "$dir"
    fi
    local file complete=1
    for file in ca.pem server.pem server.key client.pem client.key client-encrypted.key \
        other-ca.pem other-client.pem other-client.key; do
        [[ -s $dir/$file ]] || complete=0
    done
    ((complete)) && return 0
    # Only what is missing: a running broker keeps using the CA and certificate it loaded.
    log "making throwaway TLS certificates in $dir"
    mkdir -p "$dir"
    (
        set -e # inside `( ... ) ||`, errexit is off unless set again
        cd "$dir"
        [[ -s ca.pem && -s ca.key ]] || _ca ca "eventbus test CA"
        [[ -s other-ca.pem && -s other-ca.key ]] || _ca other-ca "eventbus untrusted CA"
        [[ -s server.pem && -s server.key ]] || _leaf server ca "localhost" "subjectAltName=DNS:localhost
extendedKeyUsage=serverAuth"
        if ! [[ -s client.pem && -s client.key ]]; then
            _leaf client ca "eventbus-client" "extendedKeyUsage=clientAuth"
            rm -f client-encrypted.key # it was the old key's
        fi
        [[ -s other-client.pem && -s other-client.key ]] ||
            _leaf other-client other-ca "eventbus-client" "extendedKeyUsage=clientAuth"
        [[ -s client-encrypted.key ]] ||
            openssl pkcs8 -topk8 -v2 aes-256-cbc -in client.key -out client-encrypted.key \
                -passout pass:client-key-secret
        rm -f ./*.csr ./*.srl ./*.ext
        chmod 644 ./*.pem ./*.key # read by the brokers' service accounts; test keys only
        chmod 755 .
    ) >>"$dir/openssl.log" 2>&1 || {
        show_tail "$dir/openssl.log"
        die "openssl failed; see $dir/openssl.log"
    }
}

_ca() { # _ca NAME COMMON_NAME
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$CERT_DAYS" \
        -subj "/CN=$2" -keyout "$1.key" -out "$1.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}

_leaf() { # _leaf NAME CA COMMON_NAME EXTENSIONS
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$3" -keyout "$1.key" -out "$1.csr"
    printf '%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n' "$4" \
        >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -sha256 \
        -days "$CERT_DAYS" -extfile "$1.ext" -out "$1.pem"
}
