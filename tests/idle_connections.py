"""Opens N idle AMQP connections (plain sockets doing the handshake, no client library
threads) and holds them, to measure a broker's memory per idle connection.

usage: python3 tests/idle_connections.py PORT N [SECONDS]
"""
import socket, struct, sys, time, json, os
port = int(sys.argv[1]); n = int(sys.argv[2])
def frame(t, ch, payload): return struct.pack('>BHI', t, ch, len(payload)) + payload + b'\xce'
def shortstr(s): return bytes([len(s)]) + s
def longstr(b): return struct.pack('>I', len(b)) + b
def readframe(s):
    h = b''
    while len(h) < 7: h += s.recv(7 - len(h))
    t, ch, size = struct.unpack('>BHI', h)
    body = b''
    while len(body) < size + 1: body += s.recv(size + 1 - len(body))
    return t, body[:-1]
socks = []
for i in range(n):
    s = socket.create_connection(('127.0.0.1', port)); s.sendall(b'AMQP\x00\x00\x09\x01')
    readframe(s)
    s.sendall(frame(1, 0, struct.pack('>HH', 10, 11) + struct.pack('>I', 0) + shortstr(b'PLAIN') + longstr(b'\0guest\0guest') + shortstr(b'en_US')))
    t, tune = readframe(s)
    cm, fm, hb = struct.unpack('>HIH', tune[4:12])
    s.sendall(frame(1, 0, struct.pack('>HHHIH', 10, 31, cm, fm, 0)))
    s.sendall(frame(1, 0, struct.pack('>HH', 10, 40) + shortstr(b'/') + shortstr(b'') + b'\0'))
    readframe(s)
    socks.append(s)
time.sleep(1)
print("opened", len(socks))
sys.stdout.flush()
time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 3)
