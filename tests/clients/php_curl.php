<?php
// Exercise a running server the way OpenAI's quick-start curl does, from PHP
// with the curl extension (Debian: php-cli php-curl).
//
// Reads MODELHOST_BASE_URL, MODELHOST_API_KEY, MODELHOST_ORG, MODELHOST_MODEL.
// GET {base}/models and POST {base}/chat/completions with Authorization,
// OpenAI-Organization and Content-Type headers; prints one JSON object with
// each call's HTTP status and decoded body. A transport error, a non-2xx
// status or a body that is not JSON: message on stderr, exit status 1.

function env_or_die(string $name): string {
    $v = getenv($name);
    if ($v === false || $v === '') {
        fwrite(STDERR, "missing env $name\n");
        exit(1);
    }
    return $v;
}

$base = rtrim(env_or_die('MODELHOST_BASE_URL'), '/');
$key = env_or_die('MODELHOST_API_KEY');
$org = env_or_die('MODELHOST_ORG');
$model = env_or_die('MODELHOST_MODEL');

$headers = [
    "Authorization: Bearer $key",
    "OpenAI-Organization: $org",
    'Content-Type: application/json',
];

/** One request; returns [status, decoded body (objects kept as objects)]. */
function call(string $method, string $url, array $headers, ?string $body = null): array {
    $ch = curl_init($url);
    curl_setopt_array($ch, [
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_CUSTOMREQUEST => $method,
        CURLOPT_HTTPHEADER => $headers,
        CURLOPT_TIMEOUT => 60,
    ]);
    if ($body !== null) {
        curl_setopt($ch, CURLOPT_POSTFIELDS, $body);
    }
    $raw = curl_exec($ch);
    if ($raw === false) {
        fwrite(STDERR, "$method $url: curl error: " . curl_error($ch) . "\n");
        exit(1);
    }
    $status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
    curl_close($ch);
    // Decode to stdClass, not arrays, so {} and [] survive the re-encode below.
    $decoded = json_decode($raw);
    if (json_last_error() !== JSON_ERROR_NONE) {
        fwrite(STDERR, "$method $url: HTTP $status, body is not JSON: $raw\n");
        exit(1);
    }
    if ($status < 200 || $status >= 300) {
        fwrite(STDERR, "$method $url: HTTP $status: $raw\n");
        exit(1);
    }
    return [$status, $decoded];
}

[$models_status, $models] = call('GET', "$base/models", $headers);
$payload = json_encode([
    'model' => $model,
    'messages' => [['role' => 'user', 'content' => 'Say hi']],
    'max_tokens' => 5,
]);
[$chat_status, $chat] = call('POST', "$base/chat/completions", $headers, $payload);

echo json_encode([
    'client' => 'php-curl',
    'php_version' => PHP_VERSION,
    'curl_version' => curl_version()['version'],
    'models' => ['status' => $models_status, 'body' => $models],
    'chat' => ['status' => $chat_status, 'body' => $chat],
], JSON_UNESCAPED_SLASHES) . "\n";
exit(0);
