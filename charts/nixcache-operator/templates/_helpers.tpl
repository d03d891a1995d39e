{{- define "nixcache-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nixcache-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "nixcache-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "nixcache-operator.labels" -}}
app.kubernetes.io/name: {{ include "nixcache-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "nixcache-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nixcache-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nixcache-operator.serviceAccountName" -}}
{{- default (include "nixcache-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "nixcache-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- /* The namespaces whose NixCaches the operator serves; empty means every namespace. */ -}}
{{- define "nixcache-operator.watchNamespaces" -}}
{{- $all := .Values.watchNamespaces | default list -}}
{{- if .Values.watchNamespace -}}{{- $all = append $all .Values.watchNamespace -}}{{- end -}}
{{- $all | uniq | join "," -}}
{{- end -}}
