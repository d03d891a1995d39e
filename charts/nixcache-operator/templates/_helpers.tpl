{{- define "nixcache-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nixcache-operator.labels" -}}
app.kubernetes.io/name: nixcache-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "nixcache-operator.selectorLabels" -}}
app.kubernetes.io/name: nixcache-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nixcache-operator.serviceAccountName" -}}
{{- default (include "nixcache-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "nixcache-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
