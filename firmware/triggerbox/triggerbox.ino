// livepose trigger box: N pulses at F Hz on one pin, driven over a line-based serial protocol,
// with the board time of every pulse reported to the host.
//
// Board: any Arduino (Uno, Nano, Leonardo) or Teensy (3.x/4.x). Wire PULSE_PIN (and GND) to
// every camera's trigger input (opto-isolated inputs: through the camera's I/O cable, see
// docs/acquisition.md). Pulses are scheduled from one start time (t0 + k * period), so no
// drift accumulates; jitter is that of micros() and the loop (a few µs on a Teensy 4).
//
// Protocol 2: 115200 baud, ASCII lines ending in '\n'. Every command gets exactly one reply
// line; lines starting with "P " or "W " are events, sent between replies at any time.
//   ID?             -> LIVEPOSE-TRIGGERBOX 2
//   RATE <hz>       -> OK RATE <hz> <period_us>   (0.1 .. 10000, float)
//   WIDTH <us>      -> OK WIDTH <us>               (1 .. 100000, < period)
//   COUNT <n>       -> OK COUNT <n>                (0 = until STOP)
//   WATCHDOG <ms>   -> OK WATCHDOG <ms>            (0 = off; else stop pulsing when no line
//                                                   has arrived for <ms>: the host died)
//   REPORT <0|1>    -> OK REPORT <0|1>             (pulse events on/off; on at reset)
//   START           -> OK START <t0_us>            (pulse counter reset to 0, first pulse now)
//   STOP            -> OK STOP <pulses>
//   PULSES?         -> PULSES <pulses> <running 0|1>
//   PING            -> PONG <t_us>                 (board time: the host fits its clock to it)
//   anything else   -> ERR <reason>
// Events:
//   P <k> <t_us>    pulse k (0-based) went high at board time t_us
//   W <pulses>      the watchdog stopped pulsing
// Board times are microseconds since reset, 64-bit (micros() wraps every 71 minutes; the
// sketch counts the wraps). The livepose driver is livepose/acquisition/triggerbox.py, tested
// against an emulator of this protocol in tests/unit/test_acq_triggerbox.py.

const int PULSE_PIN = 2;
const int LED_PIN = LED_BUILTIN;

float rate_hz = 30.0;
unsigned long width_us = 100;
unsigned long count = 0;
unsigned long watchdog_ms = 0;
bool report = true;

volatile bool running = false;
unsigned long pulses = 0;
unsigned long t0_us = 0;
unsigned long period_us = 33333;
bool high = false;
unsigned long high_since_us = 0;
unsigned long last_line_ms = 0;

unsigned long last_micros = 0;
unsigned long long wraps = 0;

char line[48];
byte line_len = 0;

unsigned long long now64() {
  unsigned long m = micros();
  if (m < last_micros) wraps++;
  last_micros = m;
  return (wraps << 32) | m;
}

void print64(unsigned long long v) {
  char buf[21];
  byte i = 20;
  buf[i] = 0;
  do { buf[--i] = '0' + (v % 10); v /= 10; } while (v && i);
  Serial.print(buf + i);
}

void setup() {
  pinMode(PULSE_PIN, OUTPUT);
  digitalWrite(PULSE_PIN, LOW);
  pinMode(LED_PIN, OUTPUT);
  Serial.begin(115200);
}

void reply(const char *a, long b = -1) {
  Serial.print(a);
  if (b >= 0) { Serial.print(' '); Serial.print(b); }
  Serial.print('\n');
}

void handle(char *cmd) {
  char *arg = strchr(cmd, ' ');
  if (arg) { *arg = 0; arg++; }
  if (!strcmp(cmd, "ID?")) { reply("LIVEPOSE-TRIGGERBOX 2"); }
  else if (!strcmp(cmd, "RATE") && arg) {
    float r = atof(arg);
    if (r < 0.1 || r > 10000.0 || running) { reply("ERR rate out of range or running"); return; }
    rate_hz = r; period_us = (unsigned long)(1e6 / r + 0.5);
    Serial.print("OK RATE "); Serial.print(rate_hz, 3); Serial.print(' ');
    Serial.print(period_us); Serial.print('\n');
  }
  else if (!strcmp(cmd, "WIDTH") && arg) {
    long w = atol(arg);
    if (w < 1 || w > 100000 || running) { reply("ERR width out of range or running"); return; }
    width_us = w; reply("OK WIDTH", w);
  }
  else if (!strcmp(cmd, "COUNT") && arg) {
    long n = atol(arg);
    if (n < 0 || running) { reply("ERR count out of range or running"); return; }
    count = n; reply("OK COUNT", n);
  }
  else if (!strcmp(cmd, "WATCHDOG") && arg) {
    long ms = atol(arg);
    if (ms < 0) { reply("ERR watchdog out of range"); return; }
    watchdog_ms = ms; reply("OK WATCHDOG", ms);
  }
  else if (!strcmp(cmd, "REPORT") && arg) {
    report = atol(arg) != 0; reply("OK REPORT", report ? 1 : 0);
  }
  else if (!strcmp(cmd, "START")) {
    if (width_us >= period_us) { reply("ERR width must be shorter than the period"); return; }
    pulses = 0; high = false;
    unsigned long long t0 = now64();
    t0_us = (unsigned long)t0; running = true;
    Serial.print("OK START "); print64(t0); Serial.print('\n');
  }
  else if (!strcmp(cmd, "STOP")) { running = false; digitalWrite(PULSE_PIN, LOW); reply("OK STOP", pulses); }
  else if (!strcmp(cmd, "PULSES?")) {
    Serial.print("PULSES "); Serial.print(pulses); Serial.print(' ');
    Serial.print(running ? 1 : 0); Serial.print('\n');
  }
  else if (!strcmp(cmd, "PING")) { Serial.print("PONG "); print64(now64()); Serial.print('\n'); }
  else { reply("ERR unknown command"); }
}

void loop() {
  unsigned long now = micros();
  unsigned long long now_full = now64();
  if (running) {
    if (!high && (long)(now - (t0_us + pulses * period_us)) >= 0) {
      digitalWrite(PULSE_PIN, HIGH);
      high = true; high_since_us = now;
      if (report) { Serial.print("P "); Serial.print(pulses); Serial.print(' '); print64(now_full); Serial.print('\n'); }
    }
    if (high && now - high_since_us >= width_us) {
      digitalWrite(PULSE_PIN, LOW);
      high = false; pulses++;
      if (count && pulses >= count) running = false;
    }
    if (watchdog_ms && millis() - last_line_ms > watchdog_ms) {  // the host went silent
      running = false; digitalWrite(PULSE_PIN, LOW); high = false;
      reply("W", pulses);
    }
  }
  digitalWrite(LED_PIN, running ? HIGH : LOW);
  while (Serial.available()) {
    char c = Serial.read();
    if (c == '\r') continue;
    if (c == '\n') { line[line_len] = 0; last_line_ms = millis(); handle(line); line_len = 0; }
    else if (line_len < sizeof(line) - 1) line[line_len++] = c;
  }
}
