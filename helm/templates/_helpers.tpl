{{/*
Names and labels. The chart's name is written out rather than read from
.Chart, so that the sidecar templates give the same names when a parent
chart includes them (see _sidecar.tpl).
*/}}
{{- define "kstats-proxy.name" -}}
{{- default "kstats-proxy" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's prefix for every object: "<release>-kstats-proxy", or the
release name alone when it already contains the chart's name.
*/}}
{{- define "kstats-proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "kstats-proxy.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kstats-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kstats-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kstats-proxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kstats-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kstats-proxy
{{- end }}

{{- define "kstats-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kstats-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kstats-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The ConfigMap of rules mounted at /etc/kstats/rules, or "" when the image's
shipped rules are used.
*/}}
{{- define "kstats-proxy.rulesConfigMap" -}}
{{- if and .Values.rules .Values.existingConfigMap }}
{{- fail "give the rules as `rules` or as `existingConfigMap`, not both" }}
{{- end }}
{{- if .Values.existingConfigMap }}
{{- .Values.existingConfigMap }}
{{- else if .Values.rules }}
{{- printf "%s-rules" (include "kstats-proxy.fullname" .) }}
{{- end }}
{{- end }}

{{/* Whether the chart creates the Secret itself. */}}
{{- define "kstats-proxy.createSecret" -}}
{{- $given := or .Values.secret.adminSecrets .Values.secret.files }}
{{- if and .Values.secret.existingSecret $given }}
{{- fail "give secret.existingSecret, or secret.adminSecrets and secret.files, not both" }}
{{- end }}
{{- if $given }}true{{ end }}
{{- end }}

{{/* The Secret mounted at /etc/kstats/secrets, or "" when there is none. */}}
{{- define "kstats-proxy.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if include "kstats-proxy.createSecret" . }}
{{- include "kstats-proxy.fullname" . }}
{{- end }}
{{- end }}

{{/*
The file --admin-secret-file names, or "": a created Secret has it when
adminSecrets is given; an existing one is trusted to hold adminSecretsKey
unless that is "".
*/}}
{{- define "kstats-proxy.adminSecretFile" -}}
{{- if .Values.secret.adminSecrets }}
{{- printf "/etc/kstats/secrets/%s" (default "admin-secrets" .Values.secret.adminSecretsKey) }}
{{- else if and .Values.secret.existingSecret .Values.secret.adminSecretsKey }}
{{- printf "/etc/kstats/secrets/%s" .Values.secret.adminSecretsKey }}
{{- end }}
{{- end }}

{{/*
Long enough for the preStop sleep, the proxy's own drain and some margin,
so that the kubelet's SIGKILL never cuts a drain short.
*/}}
{{- define "kstats-proxy.terminationGracePeriodSeconds" -}}
{{- if .Values.terminationGracePeriodSeconds }}
{{- .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- add (int .Values.preStopSleepSeconds) (int (ceil .Values.proxy.gracePeriod)) 10 }}
{{- end }}
{{- end }}

{{/* Whether the cluster serves the Prometheus Operator's resources. */}}
{{- define "kstats-proxy.hasPrometheusOperator" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/*
Pod annotations that roll the pods when what the proxy reads only at start
changes: the Secret it creates, and the rules when rolloutOnRulesChange.
*/}}
{{- define "kstats-proxy.podAnnotations" -}}
{{- include "kstats-proxy.checksums" . | trim }}
{{- end }}

{{- define "kstats-proxy.checksums" -}}
{{- if include "kstats-proxy.createSecret" . }}
checksum/secret: {{ include "kstats-proxy.secretData" . | sha256sum }}
{{- end }}
{{- if and .Values.rolloutOnRulesChange .Values.rules }}
checksum/rules: {{ toYaml .Values.rules | sha256sum }}
{{- end }}
{{- end }}

{{- define "kstats-proxy.secretData" -}}
{{- if .Values.secret.adminSecrets }}
{{ .Values.secret.adminSecretsKey | default "admin-secrets" }}: {{ .Values.secret.adminSecrets | b64enc }}
{{- end }}
{{- range $name, $content := .Values.secret.files }}
{{ $name }}: {{ $content | b64enc }}
{{- end }}
{{- end }}
