# Vendored for the benchmark (scripts/bench.sh) -- THE REFERENCE, NOT fix-monitor CODE.
#
# This is the original Python exporter's FIXMetricsCollector, copied verbatim (its imports and
# the class, nothing changed) from the original tool's exporter script, so that the benchmark
# can time its collect_metrics() against fix-monitor's poll. benches/py_collect.py drives it and
# also times a minimally fixed parse (see there): as shipped, _get_connections_ss() finds 0
# connections, because `ss -tna state established` prints no State column and the code reads
# the wrong columns (and splits "addr:port" on the first ':').
#
# Do not fix or reformat this file: it is here to be measured as it was.
"""
FIX连接监控Exporter for Prometheus
支持多机部署，提供/metrics接口
"""

import subprocess
import re
import time
import threading
from datetime import datetime
from http.server import HTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlparse
import json
import os
from typing import Dict, List, Tuple
import socket
import sys

class FIXMetricsCollector:
    def __init__(self, target_ip: str = None, target_port: int = None, 
                 fix_port_range: Tuple[int, int] = (5000, 6000),
                 scrape_interval: int = 10):
        """
        FIX指标收集器
        
        Args:
            target_ip: 下游服务器IP
            target_port: 下游服务器端口
            fix_port_range: FIX端口范围
            scrape_interval: 收集间隔（秒）
        """
        self.target_ip = target_ip or self._get_downstream_ip()
        self.target_port = target_port
        self.fix_port_range = fix_port_range
        self.scrape_interval = scrape_interval
        
        # 指标存储
        self.metrics = {
            'fix_connections_total': 0,           # 总连接数
            'fix_connections_active': 0,          # 活动连接数
            'fix_connections_peak': 0,            # 峰值连接数
            'fix_connection_duration_seconds': {},  # 连接时长
            'fix_connections_by_port': {},        # 按端口统计
        }
        
        # 连接跟踪
        self.active_connections = {}
        self.connection_start_times = {}
        
        # 锁用于线程安全
        self.lock = threading.Lock()
        
        # 主机标签
        self.hostname = socket.gethostname()
        self.instance_ip = self._get_local_ip()
        
        print(f"FIX Metrics Collector 启动")
        print(f"目标服务器: {self.target_ip}:{self.target_port or '所有端口'}")
        print(f"FIX端口范围: {fix_port_range[0]}-{fix_port_range[1]}")
        print(f"主机名: {self.hostname}")
        print(f"实例IP: {self.instance_ip}")
    
    def _get_local_ip(self) -> str:
        """获取本地IP"""
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(('8.8.8.8', 80))
            ip = s.getsockname()[0]
            s.close()
            return ip
        except:
            return '127.0.0.1'
    
    def _get_downstream_ip(self) -> str:
        """获取下游服务器IP（从环境变量或配置文件）"""
        # 从环境变量获取
        ip = os.getenv('DOWNSTREAM_IP')
        if ip:
            return ip
        
        # 从配置文件获取
        config_file = '/etc/fix-monitor/config.json'
        if os.path.exists(config_file):
            try:
                with open(config_file, 'r') as f:
                    config = json.load(f)
                    return config.get('downstream_ip', '127.0.0.1')
            except:
                pass
        
        return '127.0.0.1'
    
    def _get_connections_ss(self) -> List[Dict]:
        """使用ss命令获取连接信息（Linux）"""
        connections = []
        try:
            # 使用ss命令获取TCP连接
            cmd = ['ss', '-tna', 'state', 'established']
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            
            for line in result.stdout.split('\n'):
                if not line.strip():
                    continue
                
                # 解析ss输出格式
                parts = line.split()
                if len(parts) < 5:
                    continue
                
                # 提取本地和远程地址
                local = parts[3]
                remote = parts[4]
                
                # 解析地址和端口
                if ':' in remote:
                    remote_ip = remote.split(':')[0]
                    remote_port = int(remote.split(':')[1])
                    
                    if ':' in local:
                        local_ip = local.split(':')[0]
                        local_port = int(local.split(':')[1])
                        
                        # 检查是否匹配目标服务器
                        if remote_ip == self.target_ip:
                            if self.target_port and remote_port != self.target_port:
                                continue
                            
                            # 检查是否在FIX端口范围内
                            if not (self.fix_port_range[0] <= local_port <= self.fix_port_range[1]):
                                continue
                            
                            conn_id = f"{local_ip}:{local_port}-{remote_ip}:{remote_port}"
                            connections.append({
                                'id': conn_id,
                                'local_addr': f"{local_ip}:{local_port}",
                                'remote_addr': f"{remote_ip}:{remote_port}",
                                'local_port': local_port,
                                'remote_port': remote_port,
                                'timestamp': time.time()
                            })
        except Exception as e:
            print(f"获取连接信息失败: {e}")
        
        return connections
    
    def _get_connections_netstat(self) -> List[Dict]:
        """使用netstat命令获取连接信息（跨平台）"""
        connections = []
        try:
            cmd = ['netstat', '-tna']
            if sys.platform == 'win32':
                cmd = ['netstat', '-ano']
            
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            
            for line in result.stdout.split('\n'):
                if 'ESTABLISHED' not in line:
                    continue
                
                parts = re.split(r'\s+', line.strip())
                if len(parts) < 4:
                    continue
                
                # 提取地址（根据平台调整索引）
                if sys.platform == 'win32':
                    local_addr = parts[1]
                    remote_addr = parts[2]
                else:
                    local_addr = parts[3]
                    remote_addr = parts[4]
                
                # 解析地址
                if ':' in remote_addr and ':' in local_addr:
                    remote_ip, remote_port = remote_addr.rsplit(':', 1)
                    local_ip, local_port = local_addr.rsplit(':', 1)
                    
                    try:
                        remote_port = int(remote_port)
                        local_port = int(local_port)
                    except ValueError:
                        continue
                    
                    # 检查是否匹配目标服务器
                    if remote_ip == self.target_ip:
                        if self.target_port and remote_port != self.target_port:
                            continue
                        
                        # 检查是否在FIX端口范围内
                        if not (self.fix_port_range[0] <= local_port <= self.fix_port_range[1]):
                            continue
                        
                        conn_id = f"{local_ip}:{local_port}-{remote_ip}:{remote_port}"
                        connections.append({
                            'id': conn_id,
                            'local_addr': local_addr,
                            'remote_addr': remote_addr,
                            'local_port': local_port,
                            'remote_port': remote_port,
                            'timestamp': time.time()
                        })
        except Exception as e:
            print(f"获取连接信息失败: {e}")
        
        return connections
    
    def collect_metrics(self):
        """收集指标"""
        with self.lock:
            try:
                # 获取当前连接
                if sys.platform == 'linux':
                    connections = self._get_connections_ss()
                else:
                    connections = self._get_connections_netstat()
                
                current_ids = {conn['id'] for conn in connections}
                previous_ids = set(self.active_connections.keys())
                
                # 更新活动连接
                self.active_connections = {
                    conn['id']: conn for conn in connections
                }
                
                # 更新连接开始时间
                for conn_id in current_ids:
                    if conn_id not in self.connection_start_times:
                        self.connection_start_times[conn_id] = time.time()
                
                # 清理断开连接的记录
                disconnected = previous_ids - current_ids
                for conn_id in disconnected:
                    if conn_id in self.connection_start_times:
                        del self.connection_start_times[conn_id]
                
                # 计算指标
                active_connections = len(self.active_connections)
                
                # 更新总连接数（累计）
                self.metrics['fix_connections_total'] += len(disconnected)
                
                # 更新峰值连接数
                if active_connections > self.metrics['fix_connections_peak']:
                    self.metrics['fix_connections_peak'] = active_connections
                
                # 更新活动连接数
                self.metrics['fix_connections_active'] = active_connections
                
                # 计算连接时长
                self.metrics['fix_connection_duration_seconds'] = {}
                for conn_id, start_time in self.connection_start_times.items():
                    duration = time.time() - start_time
                    self.metrics['fix_connection_duration_seconds'][conn_id] = duration
                
                # 按端口统计
                self.metrics['fix_connections_by_port'] = {}
                for conn in connections:
                    port = conn['local_port']
                    self.metrics['fix_connections_by_port'][port] = \
                        self.metrics['fix_connections_by_port'].get(port, 0) + 1
                
                return True
            except Exception as e:
                print(f"收集指标时出错: {e}")
                return False
    
    def get_prometheus_metrics(self) -> str:
        """生成Prometheus格式的指标"""
        with self.lock:
            metrics_lines = []
            
            # 添加HELP和TYPE注释
            metrics_lines.append('# HELP fix_connections_total Total number of FIX connections since startup')
            metrics_lines.append('# TYPE fix_connections_total counter')
            metrics_lines.append(f'fix_connections_total{{host="{self.hostname}",ip="{self.instance_ip}",target="{self.target_ip}"}} {self.metrics["fix_connections_total"]}')
            
            metrics_lines.append('# HELP fix_connections_active Current number of active FIX connections')
            metrics_lines.append('# TYPE fix_connections_active gauge')
            metrics_lines.append(f'fix_connections_active{{host="{self.hostname}",ip="{self.instance_ip}",target="{self.target_ip}"}} {self.metrics["fix_connections_active"]}')
            
            metrics_lines.append('# HELP fix_connections_peak Peak number of FIX connections')
            metrics_lines.append('# TYPE fix_connections_peak gauge')
            metrics_lines.append(f'fix_connections_peak{{host="{self.hostname}",ip="{self.instance_ip}",target="{self.target_ip}"}} {self.metrics["fix_connections_peak"]}')
            
            # 连接时长指标
            metrics_lines.append('# HELP fix_connection_duration_seconds Duration of active FIX connections in seconds')
            metrics_lines.append('# TYPE fix_connection_duration_seconds gauge')
            for conn_id, duration in self.metrics['fix_connection_duration_seconds'].items():
                # 从conn_id提取信息
                try:
                    local_addr, remote_addr = conn_id.split('-', 1)
                    metrics_lines.append(f'fix_connection_duration_seconds{{host="{self.hostname}",local_addr="{local_addr}",remote_addr="{remote_addr}",target="{self.target_ip}"}} {duration}')
                except:
                    continue
            
            # 按端口统计的指标
            metrics_lines.append('# HELP fix_connections_by_port FIX connections count by local port')
            metrics_lines.append('# TYPE fix_connections_by_port gauge')
            for port, count in self.metrics['fix_connections_by_port'].items():
                metrics_lines.append(f'fix_connections_by_port{{host="{self.hostname}",port="{port}",target="{self.target_ip}"}} {count}')
            
            return '\n'.join(metrics_lines)
