{{/* The chart's name. */}}
{{- define "palisade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The resources' base name: <release>-palisade, or the release name if it says palisade. */}}
{{- define "palisade.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "palisade.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "palisade.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "palisade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "palisade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The members' selector: the pods of the StatefulSet only (not the hook or test pods). */}}
{{- define "palisade.memberLabels" -}}
{{ include "palisade.selectorLabels" . }}
app.kubernetes.io/component: member
{{- end -}}

{{- define "palisade.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "palisade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "palisade.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The headless Service the members reach each other through. */}}
{{- define "palisade.peerService" -}}
{{- printf "%s-peer" (include "palisade.fullname" .) -}}
{{- end -}}

{{- define "palisade.clientScheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{- define "palisade.peerScheme" -}}
{{- if .Values.peer.tls.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{/* A member's DNS name: <pod>.<peer service>.<namespace>.svc.<domain>; call with (list $ ORDINAL). */}}
{{- define "palisade.memberHost" -}}
{{- $ := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "palisade.fullname" $) (int (index . 1)) (include "palisade.peerService" $) $.Release.Namespace $.Values.clusterDomain -}}
{{- end -}}

{{- define "palisade.memberPeerUrl" -}}
{{- printf "%s://%s:7380" (include "palisade.peerScheme" (index . 0)) (include "palisade.memberHost" .) -}}
{{- end -}}

{{/* The client Service's URL, as the hook and test pods reach it. */}}
{{- define "palisade.clientUrl" -}}
{{- printf "%s://%s.%s.svc.%s:%d" (include "palisade.clientScheme" .) (include "palisade.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.service.port) -}}
{{- end -}}

{{/* new or existing: whether the pods bootstrap a cluster or join one (cluster.state). */}}
{{- define "palisade.clusterState" -}}
{{- if eq .Values.cluster.state "auto" -}}
{{- if lookup "apps/v1" "StatefulSet" .Release.Namespace (include "palisade.fullname" .) -}}existing{{- else -}}new{{- end -}}
{{- else -}}
{{- .Values.cluster.state -}}
{{- end -}}
{{- end -}}

{{/* A duration value (500ms, 15s, 2m, 1h) in milliseconds; the schema has checked its form. */}}
{{- define "palisade.ms" -}}
{{- $d := toString . -}}
{{- if hasSuffix "ms" $d -}}{{ trimSuffix "ms" $d | int64 }}
{{- else if hasSuffix "s" $d -}}{{ mul (trimSuffix "s" $d | int64) 1000 }}
{{- else if hasSuffix "m" $d -}}{{ mul (trimSuffix "m" $d | int64) 60000 }}
{{- else -}}{{ mul (trimSuffix "h" $d | int64) 3600000 }}
{{- end -}}
{{- end -}}

{{/* The Secret holding the keys the chart generated (auth's jwt-secret, the peer secret). */}}
{{- define "palisade.keysSecret" -}}
{{- printf "%s-keys" (include "palisade.fullname" .) -}}
{{- end -}}

{{- define "palisade.authSecret" -}}
{{- default (include "palisade.keysSecret" .) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "palisade.peerSecret" -}}
{{- default (include "palisade.keysSecret" .) .Values.peer.secret.existingSecret -}}
{{- end -}}

{{- define "palisade.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled -}}{{ printf "%s-tls" (include "palisade.fullname" .) }}{{- else -}}{{ .Values.tls.existingSecret }}{{- end -}}
{{- end -}}

{{- define "palisade.peerTlsSecret" -}}
{{- if .Values.peer.tls.certManager.enabled -}}{{ printf "%s-peer-tls" (include "palisade.fullname" .) }}{{- else -}}{{ .Values.peer.tls.existingSecret }}{{- end -}}
{{- end -}}

{{/* Whether the client-side pods (hooks, tests) can mint tokens: auth on with an HS256 key. */}}
{{- define "palisade.canMint" -}}
{{- if and .Values.auth.enabled .Values.auth.secretKey }}true{{ end -}}
{{- end -}}

{{/* Whether the client-side pods read a token from auth.adminTokenSecret instead (no HS256 key). */}}
{{- define "palisade.tokenFromSecret" -}}
{{- if and .Values.auth.enabled (not .Values.auth.secretKey) .Values.auth.adminTokenSecret.name }}true{{ end -}}
{{- end -}}

{{/* The environment variables the chart sets on the members (extraEnv may not repeat them). */}}
{{- define "palisade.chartEnv" -}}
PALISADE_NODE_ID PALISADE_NODE_ID_FROM_HOSTNAME PALISADE_DATA_DIR PALISADE_LISTEN_CLIENT PALISADE_LISTEN_PEER PALISADE_ADVERTISE_CLIENT PALISADE_ADVERTISE_PEER PALISADE_INITIAL_CLUSTER PALISADE_JOIN PALISADE_PEER_SECRET_FILE PALISADE_PEER_TLS_CERT_FILE PALISADE_PEER_TLS_KEY_FILE PALISADE_PEER_TLS_CA_FILE PALISADE_TLS_CERT_FILE PALISADE_TLS_KEY_FILE PALISADE_AUTH_JWT_SECRET_FILE PALISADE_AUTH_JWT_PUBLIC_KEYS PALISADE_AUTH_JWT_ISSUER PALISADE_AUTH_JWT_AUDIENCE PALISADE_METRICS PALISADE_SHUTDOWN_TIMEOUT_MS PALISADE_HEARTBEAT_MS PALISADE_ELECTION_TIMEOUT_MS PALISADE_LOG_FORMAT PALISADE_LOG_LEVEL PALISADE_CONFIG PALISADE_REBUILD_FROM_PEERS
{{- end -}}

{{/* Settings checked across values, beyond what the schema can say. */}}
{{- define "palisade.validate" -}}
{{- if and .Values.auth.enabled (not .Values.auth.secretKey) (not .Values.auth.publicKeysKey) -}}
{{- fail "auth.enabled needs a key: auth.secretKey (HS256) and/or auth.publicKeysKey" -}}
{{- end -}}
{{- if and .Values.auth.enabled .Values.auth.publicKeysKey (not .Values.auth.existingSecret) -}}
{{- fail "auth.publicKeysKey names a key of auth.existingSecret: give auth.existingSecret" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (ne .Values.auth.secretKey "jwt-secret") -}}
{{- fail "auth.secretKey names a key of auth.existingSecret; the Secret the chart generates holds jwt-secret" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.secretKey) (not .Values.auth.adminTokenSecret.name) (or .Values.tests.enabled .Values.scaleDown.hook) -}}
{{- fail "with auth.enabled and no auth.secretKey, the helm test and scale-down hook pods cannot mint a token: give auth.adminTokenSecret (a Secret holding an admin token), or set tests.enabled and scaleDown.hook false" -}}
{{- end -}}
{{- $chartEnv := splitList " " (include "palisade.chartEnv" .) -}}
{{- range $name, $_ := .Values.extraEnv -}}
{{- if has $name $chartEnv -}}
{{- fail (printf "extraEnv.%s is set by the chart itself: use the chart's value for it (see values.yaml)" $name) -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.peer.secret.enabled) (not .Values.peer.tls.enabled) -}}
{{- fail "peer traffic needs peer.secret.enabled or peer.tls.enabled: the peer port would otherwise let anyone who reaches it rewrite the store" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not .Values.tls.certManager.enabled) -}}
{{- fail "tls.enabled needs tls.existingSecret or tls.certManager.enabled" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.enabled) -}}
{{- fail "tls.certManager.enabled needs tls.enabled" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and .Values.peer.tls.enabled (not .Values.peer.tls.existingSecret) (not .Values.peer.tls.certManager.enabled) -}}
{{- fail "peer.tls.enabled needs peer.tls.existingSecret or peer.tls.certManager.enabled" -}}
{{- end -}}
{{- if and .Values.peer.tls.certManager.enabled (not .Values.peer.tls.enabled) -}}
{{- fail "peer.tls.certManager.enabled needs peer.tls.enabled" -}}
{{- end -}}
{{- if and .Values.peer.tls.certManager.enabled (not .Values.peer.tls.certManager.issuerRef.name) -}}
{{- fail "peer.tls.certManager.enabled needs peer.tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (add (div (int64 (include "palisade.ms" .Values.shutdownTimeout)) 1000) 10) -}}
{{- fail "terminationGracePeriodSeconds must be at least shutdownTimeout + 10 s (the leadership hand-over after the drain)" -}}
{{- end -}}
{{- if lt (int64 (include "palisade.ms" .Values.electionTimeout)) (mul 3 (int64 (include "palisade.ms" .Values.heartbeat))) -}}
{{- fail "electionTimeout must be at least 3 x heartbeat" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (eq .Values.metrics.access "off") -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.access open or auth" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.auth.enabled (eq .Values.metrics.access "auth") (not .Values.metrics.serviceMonitor.tokenSecret.name) -}}
{{- fail "metrics.serviceMonitor.enabled with metrics.access auth needs metrics.serviceMonitor.tokenSecret.name (a Secret holding a token), or set metrics.access open" -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the client-side pods (hooks, tests): endpoints, CA, token file. */}}
{{- define "palisade.clientEnv" -}}
- name: PALISADE_ENDPOINTS
  value: {{ include "palisade.clientUrl" . | quote }}
{{- if .Values.tls.enabled }}
- name: PALISADE_CACERT
  value: /etc/palisade/tls/ca.crt
{{- end }}
{{- if include "palisade.canMint" . }}
- name: PALISADE_TOKEN_FILE
  value: /scratch/token
{{- else if include "palisade.tokenFromSecret" . }}
- name: PALISADE_TOKEN_FILE
  value: /etc/palisade/token/{{ .Values.auth.adminTokenSecret.key }}
{{- end }}
{{- end -}}

{{/* A restricted container securityContext. */}}
{{- define "palisade.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "palisade.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The pod-level spec of a client-side pod (hooks, tests): restricted, never restarted,
     with a scratch dir for the minted token, the HS256 key to mint it and the client CA. */}}
{{- define "palisade.clientPodSpec" -}}
restartPolicy: Never
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- include "palisade.podSecurityContext" . | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: scratch
    emptyDir:
      medium: Memory
      sizeLimit: 1Mi
  {{- if include "palisade.canMint" . }}
  - name: auth
    secret:
      secretName: {{ include "palisade.authSecret" . }}
      defaultMode: 0440
      items:
        - key: {{ .Values.auth.secretKey }}
          path: {{ .Values.auth.secretKey }}
  {{- end }}
  {{- if include "palisade.tokenFromSecret" . }}
  - name: token
    secret:
      secretName: {{ .Values.auth.adminTokenSecret.name }}
      defaultMode: 0440
      items:
        - key: {{ .Values.auth.adminTokenSecret.key }}
          path: {{ .Values.auth.adminTokenSecret.key }}
  {{- end }}
  {{- if .Values.tls.enabled }}
  - name: tls
    secret:
      secretName: {{ include "palisade.tlsSecret" . }}
      defaultMode: 0440
      items:
        - key: ca.crt
          path: ca.crt
  {{- end }}
{{- end -}}

{{/* One step of a client-side pod: a container running `palisade ARGS...`; call with (list $ NAME ARGS). */}}
{{- define "palisade.clientStep" -}}
{{- $ := index . 0 -}}
- name: {{ index . 1 }}
  image: {{ include "palisade.image" $ | quote }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  command: [palisade]
  args: {{ index . 2 | toJson }}
  env:
    {{- include "palisade.clientEnv" $ | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      memory: 64Mi
  securityContext:
    {{- include "palisade.containerSecurityContext" $ | nindent 4 }}
  volumeMounts:
    - name: scratch
      mountPath: /scratch
    {{- if include "palisade.canMint" $ }}
    - name: auth
      mountPath: /etc/palisade/auth
      readOnly: true
    {{- end }}
    {{- if include "palisade.tokenFromSecret" $ }}
    - name: token
      mountPath: /etc/palisade/token
      readOnly: true
    {{- end }}
    {{- if $.Values.tls.enabled }}
    - name: tls
      mountPath: /etc/palisade/tls
      readOnly: true
    {{- end }}
{{- end -}}

{{/* The step that mints a client-side pod's token (none when it cannot mint); call with (list $ GRANT-ARGS). */}}
{{- define "palisade.mintStep" -}}
{{- $ := index . 0 -}}
{{- if include "palisade.canMint" $ -}}
{{- $args := concat (list "auth" "token" "--ttl" "10m" "--secret-file" (printf "/etc/palisade/auth/%s" $.Values.auth.secretKey) "--output" "/scratch/token") (index . 1) -}}
{{- with $.Values.auth.issuer }}{{ $args = concat $args (list "--iss" .) }}{{ end -}}
{{- with $.Values.auth.audience }}{{ $args = concat $args (list "--aud" .) }}{{ end -}}
{{- include "palisade.clientStep" (list $ "token" $args) -}}
{{- end -}}
{{- end -}}
